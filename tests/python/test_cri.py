#!/usr/bin/env python3
"""End-to-end test of frakti's CRI server with a client stack we did not write.

Uses Python grpcio against the daemon's unix socket.  The CRI proto vendored at
third_party/cri-api/api.proto is compiled with grpc_tools into a temporary
directory at test time (no generated code is committed).

The test starts its own daemon on a fresh root/state dir and socket, runs the
checks (booting exactly one pod VM), removes every pod it created even when a
check fails, stops the daemon with SIGTERM, prints one line per check and
finally a line `N passed, M failed`.  It exits non-zero if anything failed.

Environment:
  FRAKTI_BIN            daemon binary (default <repo>/target/release/frakti)
  FRAKTI_GUEST_DIR      dir holding vmlinux and initramfs.img (default <repo>/target/guest)
  FRAKTI_START_TIMEOUT  seconds to wait for the socket to answer Version (default 30)
  FRAKTI_KEEP_TMP=1     keep the temporary directory (daemon log, root, state)

Run:  target/pyenv/bin/python tests/python/test_cri.py
"""

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
PROTO_DIR = os.path.join(REPO, "third_party", "cri-api")

RPC_TIMEOUT = 10  # seconds, for cheap unary calls
RUN_POD_TIMEOUT = 120  # VMs boot under software emulation here
STOP_POD_TIMEOUT = 60
REMOVE_POD_TIMEOUT = 60

POD_NAME = "py-pod"
POD_UID = "py-uid-1"
POD_NAMESPACE = "default"
POD_LABELS = {"test": "python"}


# --------------------------------------------------------------------------
# Result bookkeeping
# --------------------------------------------------------------------------


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"PASS  {name}" + (f"  ({detail})" if detail else ""), flush=True)
        else:
            self.failed += 1
            print(f"FAIL  {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    def skip(self, name, why):
        self.skipped += 1
        print(f"SKIP  {name}: {why}", flush=True)


R = Results()


def info(msg):
    print(f"INFO  {msg}", flush=True)


def warn(msg):
    print(f"WARN  {msg}", flush=True)


# --------------------------------------------------------------------------
# Proto compilation
# --------------------------------------------------------------------------


def compile_proto(out_dir):
    """Compile api.proto into out_dir and import api_pb2 / api_pb2_grpc from it."""
    os.makedirs(out_dir, exist_ok=True)
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        "-I", PROTO_DIR,
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        "api.proto",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"protoc failed ({res.returncode}): {res.stderr.strip()}")
    sys.path.insert(0, out_dir)
    import api_pb2  # noqa: E402
    import api_pb2_grpc  # noqa: E402
    return api_pb2, api_pb2_grpc


# --------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------


def _pdeathsig():
    """In the child: get SIGTERM if the test process dies, so no daemon is leaked."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def proc_identity(pid):
    """(starttime, state) of /proc/<pid>, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces/parens: split after the last ')'.
    rest = stat[stat.rindex(")") + 2:].split()
    state = rest[0]  # field 3
    starttime = rest[19]  # field 22
    return starttime, state


def proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_running(pid, starttime):
    """True if pid is a live (non-zombie) process that started at `starttime`."""
    ident = proc_identity(pid)
    if ident is None:
        return False, "no /proc entry"
    st, state = ident
    if st != starttime:
        return False, f"pid reused by another process (state {state})"
    if state in ("Z", "X"):
        return False, f"process is a {'zombie' if state == 'Z' else 'dead'} (state {state}), not reaped yet"
    return True, f"state {state}"


def free_tcp_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, n=60):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


# --------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------


class CriTest:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="frakti-py-")
        self.sock_dir = self.tmp
        if len(os.path.join(self.sock_dir, "cri.sock")) > 100:
            # sun_path is limited to 108 bytes; fall back to a short dir under /tmp.
            self.sock_dir = tempfile.mkdtemp(prefix="frakti-py-", dir="/tmp")
        self.socket = os.path.join(self.sock_dir, "cri.sock")
        self.root = os.path.join(self.tmp, "root")
        self.state_dir = os.path.join(self.tmp, "state")
        self.log_path = os.path.join(self.tmp, "frakti.log")
        self.daemon = None
        self.log_file = None
        self.channel = None
        self.rt = None
        self.img = None
        self.pb = None
        self.created = []  # every pod id the daemon handed us
        self.qemu_pids = {}  # pid -> starttime, for leak detection

    # -- daemon ---------------------------------------------------------

    def paths(self):
        frakti_bin = os.environ.get("FRAKTI_BIN", os.path.join(REPO, "target", "release", "frakti"))
        guest_dir = os.environ.get("FRAKTI_GUEST_DIR", os.path.join(REPO, "target", "guest"))
        return frakti_bin, os.path.join(guest_dir, "vmlinux"), os.path.join(guest_dir, "initramfs.img")

    def start_daemon(self):
        frakti_bin, kernel, initrd = self.paths()
        self.metrics_port = free_tcp_port()
        missing = [p for p in (frakti_bin, kernel, initrd) if not os.path.isfile(p)]
        if not R.check("prerequisites: daemon binary and guest kernel/initrd exist", not missing,
                       "missing: " + ", ".join(missing) if missing else ""):
            return False
        os.makedirs(self.root)
        os.makedirs(self.state_dir)
        cmd = [
            frakti_bin,
            "--listen", self.socket,
            "--root", self.root,
            "--state-dir", self.state_dir,
            "--accel", "tcg",
            "--cpu", "1",
            "--memory", "256",
            "--log-level", "info",
            "--guest-kernel", kernel,
            "--guest-initrd", initrd,
            # An empty CNI directory: the embedded default network.
            "--cni-conf-dir", os.path.join(self.tmp, "net.d"),
            "--metrics-address", f"127.0.0.1:{self.metrics_port}",
        ]
        info("starting " + " ".join(cmd))
        self.log_file = open(self.log_path, "wb")
        # Own session: a terminal Ctrl-C reaches only the test, which then
        # cleans up its pods through the daemon before stopping it.
        self.daemon = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_pdeathsig, cwd=self.tmp,
        )
        return True

    def connect(self):
        import grpc
        pb, pb_grpc = self.pb, self.pb_grpc
        timeout = float(os.environ.get("FRAKTI_START_TIMEOUT", "30"))
        deadline = time.monotonic() + timeout
        self.channel = grpc.insecure_channel(
            "unix:" + self.socket, options=[("grpc.default_authority", "localhost")])
        self.rt = pb_grpc.RuntimeServiceStub(self.channel)
        self.img = pb_grpc.ImageServiceStub(self.channel)
        last = "socket not created"
        while time.monotonic() < deadline:
            code = self.daemon.poll()
            if code is not None:
                return R.check("daemon starts and answers Version on its socket", False,
                               f"daemon exited with code {code} during startup")
            if os.path.exists(self.socket):
                try:
                    self.rt.Version(pb.VersionRequest(version="v1"), timeout=1)
                    return R.check("daemon starts and answers Version on its socket", True,
                                   f"after {timeout - (deadline - time.monotonic()):.1f}s")
                except grpc.RpcError as e:
                    last = f"{e.code()}: {e.details()}"
            time.sleep(0.2)
        return R.check("daemon starts and answers Version on its socket", False,
                       f"no answer within {timeout:.0f}s (last: {last})")

    def stop_daemon(self):
        if self.channel is not None:
            self.channel.close()
        if self.daemon is None:
            return
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                warn(f"daemon pid {self.daemon.pid} ignored SIGTERM for 30s; sending SIGKILL")
                self.daemon.kill()
                self.daemon.wait()
        info(f"daemon exited with code {self.daemon.returncode}")
        if self.log_file:
            self.log_file.close()

    def reap_leaked_qemu(self):
        """Kill QEMU processes of this test's pods that outlived cleanup (a daemon bug)."""
        for pid, starttime in self.qemu_pids.items():
            running, _ = pid_running(pid, starttime)
            if not running:
                continue
            cmdline = proc_cmdline(pid)
            if self.tmp in cmdline:
                warn(f"QEMU pid {pid} of this test is still running after cleanup; killing it")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            else:
                warn(f"QEMU pid {pid} is still running after cleanup (cmdline does not name "
                     f"{self.tmp}, not killing it): {cmdline[:200]}")

    # -- rpc helpers ----------------------------------------------------

    def rpc(self, fn, req, timeout=RPC_TIMEOUT):
        """Call fn(req); return (response, None) or (None, RpcError)."""
        import grpc
        try:
            return fn(req, timeout=timeout), None
        except grpc.RpcError as e:
            return None, e

    def expect_ok(self, name, fn, req, timeout=RPC_TIMEOUT):
        resp, err = self.rpc(fn, req, timeout)
        if err is not None:
            R.check(name, False, f"got {err.code().name}: {err.details()}")
            return None
        R.check(name, True)
        return resp

    def expect_error(self, name, fn, req, code, mention=None, timeout=RPC_TIMEOUT):
        resp, err = self.rpc(fn, req, timeout)
        if err is None:
            # Remember anything the daemon wrongly created so cleanup removes it.
            pod_id = getattr(resp, "pod_sandbox_id", "")
            if pod_id:
                self.created.append(pod_id)
            R.check(name, False, f"expected {code.name}, call succeeded: {str(resp).strip()!r}")
            return
        details = err.details() or ""
        if err.code() != code:
            R.check(name, False, f"expected {code.name}, got {err.code().name}: {details}")
            return
        if mention is not None and mention not in details:
            R.check(name, False, f"{code.name} but details do not mention {mention!r}: {details!r}")
            return
        R.check(name, True, f"{code.name}: {details}")

    # -- checks ---------------------------------------------------------

    def test_version(self):
        pb = self.pb
        v = self.expect_ok("Version succeeds", self.rt.Version, pb.VersionRequest(version="v1"))
        if v is None:
            return
        R.check("Version.runtime_name == 'frakti'", v.runtime_name == "frakti", repr(v.runtime_name))
        R.check("Version.runtime_api_version == 'v1'", v.runtime_api_version == "v1",
                repr(v.runtime_api_version))
        R.check("Version.runtime_version is non-empty", v.runtime_version != "", repr(v.runtime_version))
        # Older grpc-go (kubelet 1.20) and grpcio's default send the socket
        # path as :authority; the server must answer them too.
        import grpc
        for authority in (self.socket, None):
            options = [] if authority is None else [("grpc.default_authority", authority)]
            name = ("Version with the socket path as :authority" if authority
                    else "Version from a channel with grpcio's default authority")
            with grpc.insecure_channel("unix:" + self.socket, options=options) as channel:
                stub = self.pb_grpc.RuntimeServiceStub(channel)
                self.expect_ok(name, stub.Version, pb.VersionRequest(version="v1"))

    def test_status(self):
        pb = self.pb
        s = self.expect_ok("Status succeeds", self.rt.Status, pb.StatusRequest())
        if s is None:
            return
        conds = {c.type: c for c in s.status.conditions}
        rr = conds.get("RuntimeReady")
        R.check("Status: RuntimeReady condition is True", rr is not None and rr.status is True,
                "missing" if rr is None else f"status={rr.status} reason={rr.reason!r}")
        nr = conds.get("NetworkReady")
        R.check("Status: NetworkReady condition is True (embedded default network)",
                nr is not None and nr.status is True,
                "missing" if nr is None else f"status={nr.status} reason={nr.reason!r} message={nr.message!r}")
        R.check("Status: runtime_handlers is non-empty", len(s.runtime_handlers) > 0,
                repr([h.name for h in s.runtime_handlers]))

    def test_invalid_and_unknown(self):
        import grpc
        pb = self.pb
        C = grpc.StatusCode
        self.expect_error(
            "RunPodSandbox without metadata -> INVALID_ARGUMENT mentioning 'metadata'",
            self.rt.RunPodSandbox,
            pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(hostname="py-nometa")),
            C.INVALID_ARGUMENT, "metadata", timeout=RUN_POD_TIMEOUT)
        self.expect_error(
            "RunPodSandbox with empty metadata.name -> INVALID_ARGUMENT mentioning 'name'",
            self.rt.RunPodSandbox,
            pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(
                metadata=pb.PodSandboxMetadata(name="", uid="py-uid-noname", namespace="default", attempt=0),
                hostname="py-noname")),
            C.INVALID_ARGUMENT, "name", timeout=RUN_POD_TIMEOUT)
        self.expect_error(
            "RunPodSandbox with runtime_handler='no-such-handler' -> INVALID_ARGUMENT naming it",
            self.rt.RunPodSandbox,
            pb.RunPodSandboxRequest(
                config=pb.PodSandboxConfig(
                    metadata=pb.PodSandboxMetadata(name="py-badhandler", uid="py-uid-badhandler",
                                                   namespace="default", attempt=0),
                    hostname="py-badhandler"),
                runtime_handler="no-such-handler"),
            C.INVALID_ARGUMENT, "no-such-handler", timeout=RUN_POD_TIMEOUT)
        self.expect_error(
            "PodSandboxStatus of unknown id -> NOT_FOUND",
            self.rt.PodSandboxStatus, pb.PodSandboxStatusRequest(pod_sandbox_id="does-not-exist"),
            C.NOT_FOUND)
        self.expect_ok("StopPodSandbox of unknown id succeeds (idempotent)",
                       self.rt.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id="does-not-exist"))
        self.expect_ok("RemovePodSandbox of unknown id succeeds (idempotent)",
                       self.rt.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id="does-not-exist"))

    def test_images(self):
        import grpc
        pb = self.pb
        resp = self.expect_ok("ImageService.ListImages on a fresh daemon", self.img.ListImages,
                              pb.ListImagesRequest())
        if resp is not None:
            R.check("ListImages is empty", len(resp.images) == 0, f"{len(resp.images)} images")
        self.expect_error("PullImage of a malformed reference -> INVALID_ARGUMENT",
                          self.img.PullImage,
                          pb.PullImageRequest(image=pb.ImageSpec(image="Bad:Ref:x")),
                          grpc.StatusCode.INVALID_ARGUMENT)
        self.expect_ok("RemoveImage of an unknown image succeeds", self.img.RemoveImage,
                       pb.RemoveImageRequest(image=pb.ImageSpec(image="never/pulled:1")))

    def pod_config(self):
        pb = self.pb
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=POD_NAME, uid=POD_UID, namespace=POD_NAMESPACE, attempt=0),
            hostname=POD_NAME,
            labels=POD_LABELS,
        )

    def test_pod_lifecycle(self):
        import grpc
        pb = self.pb
        C = grpc.StatusCode
        steps = [
            "PodSandboxStatus(verbose) of the pod", "ListPodSandbox filters",
            "RunPodSandbox with the same metadata -> ALREADY_EXISTS", "StopPodSandbox",
            "QEMU process gone after stop", "RemovePodSandbox", "status after remove",
        ]

        t0 = time.monotonic()
        resp = self.expect_ok("RunPodSandbox py-pod succeeds", self.rt.RunPodSandbox,
                              pb.RunPodSandboxRequest(config=self.pod_config()), timeout=RUN_POD_TIMEOUT)
        if resp is None:
            for s in steps:
                R.skip(s, "RunPodSandbox failed")
            return
        pod_id = resp.pod_sandbox_id
        if pod_id:
            self.created.append(pod_id)
        info(f"pod {pod_id} ready after {time.monotonic() - t0:.1f}s")
        R.check("RunPodSandbox returns a 64-hex-char id", re.fullmatch(r"[0-9a-f]{64}", pod_id) is not None,
                repr(pod_id))

        # ---- verbose status -------------------------------------------
        qemu_pid, qemu_start = None, None
        st = self.expect_ok("PodSandboxStatus(verbose=True) succeeds", self.rt.PodSandboxStatus,
                            pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
        if st is not None:
            s = st.status
            R.check("status.id is the pod id", s.id == pod_id, repr(s.id))
            R.check("status.state == SANDBOX_READY", s.state == pb.SANDBOX_READY,
                    pb.PodSandboxState.Name(s.state))
            m = s.metadata
            R.check("status.metadata echoed",
                    s.HasField("metadata") and (m.name, m.uid, m.namespace, m.attempt)
                    == (POD_NAME, POD_UID, POD_NAMESPACE, 0),
                    f"name={m.name!r} uid={m.uid!r} namespace={m.namespace!r} attempt={m.attempt}")
            R.check("status.labels echoed", dict(s.labels) == POD_LABELS, repr(dict(s.labels)))
            R.check("status.created_at > 0", s.created_at > 0, str(s.created_at))
            R.check("status.network.ip is in the default pod subnet 10.77.0.0/16",
                    s.network.ip.startswith("10.77."), repr(s.network.ip))
            verbose = None
            raw = st.info.get("info")
            if R.check("verbose info has key 'info'", raw is not None, f"keys: {sorted(st.info.keys())}"):
                try:
                    verbose = json.loads(raw)
                    R.check("info['info'] is a JSON object", isinstance(verbose, dict), type(verbose).__name__)
                except ValueError as e:
                    R.check("info['info'] is a JSON object", False, f"{e}: {raw[:200]!r}")
            if isinstance(verbose, dict):
                vm = verbose.get("vm")
                pid = vm.get("pid") if isinstance(vm, dict) else None
                ok = isinstance(pid, int) and not isinstance(pid, bool) and pid > 0
                R.check("info: vm.pid is a positive integer", ok,
                        f"vm={json.dumps(vm)[:300] if vm is not None else 'missing'}")
                if ok:
                    ident = proc_identity(pid)
                    running = ident is not None and ident[1] not in ("Z", "X")
                    R.check(f"info: vm.pid {pid} is a running process", running,
                            "no /proc entry" if ident is None else f"state {ident[1]}: {proc_cmdline(pid)[:120]}")
                    if running:
                        qemu_pid, qemu_start = pid, ident[0]
                        self.qemu_pids[pid] = ident[0]
                guest = verbose.get("guest")
                hostname = guest.get("hostname") if isinstance(guest, dict) else None
                R.check("info: guest.hostname == 'py-pod'", hostname == POD_NAME,
                        f"guest={json.dumps(guest)[:300] if guest is not None else 'missing'}")

        # ---- list filters ---------------------------------------------
        lst = self.expect_ok("ListPodSandbox(label test=python) succeeds", self.rt.ListPodSandbox,
                             pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(label_selector={"test": "python"})))
        if lst is not None:
            ids = [p.id for p in lst.items]
            R.check("ListPodSandbox(label test=python) returns exactly the pod", ids == [pod_id], repr(ids))
        lst = self.expect_ok("ListPodSandbox(label test=nope) succeeds", self.rt.ListPodSandbox,
                             pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(label_selector={"test": "nope"})))
        if lst is not None:
            ids = [p.id for p in lst.items]
            R.check("ListPodSandbox(label test=nope) returns none", ids == [], repr(ids))
        lst = self.expect_ok(
            "ListPodSandbox(state SANDBOX_NOTREADY) succeeds", self.rt.ListPodSandbox,
            pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(
                state=pb.PodSandboxStateValue(state=pb.SANDBOX_NOTREADY))))
        if lst is not None:
            ids = [p.id for p in lst.items]
            R.check("ListPodSandbox(state SANDBOX_NOTREADY) returns none", ids == [], repr(ids))

        # ---- stats, streaming lists, events ---------------------------
        ps = self.expect_ok("PodSandboxStats succeeds", self.rt.PodSandboxStats,
                            pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id))
        if ps is not None:
            lx = ps.stats.linux
            R.check("PodSandboxStats: attributes name the pod", ps.stats.attributes.id == pod_id,
                    repr(ps.stats.attributes.id))
            R.check("PodSandboxStats: the VM's CPU time is counted", lx.cpu.usage_core_nano_seconds.value > 0,
                    str(lx.cpu))
            R.check("PodSandboxStats: the VM's memory is counted (> 16 MiB)",
                    lx.memory.working_set_bytes.value > 16 << 20, str(lx.memory))
            R.check("PodSandboxStats: the default interface is eth0",
                    lx.network.default_interface.name == "eth0", str(lx.network))
        lst = self.expect_ok("ListPodSandboxStats succeeds", self.rt.ListPodSandboxStats,
                             pb.ListPodSandboxStatsRequest())
        if lst is not None:
            ids = [p.attributes.id for p in lst.stats]
            R.check("ListPodSandboxStats lists the pod", ids == [pod_id], repr(ids))
        lst = self.expect_ok("ListContainerStats succeeds", self.rt.ListContainerStats,
                             pb.ListContainerStatsRequest())
        if lst is not None:
            R.check("ListContainerStats is empty (no containers)", len(lst.stats) == 0, str(lst))
        self.expect_error("ContainerStats of an unknown id -> NOT_FOUND", self.rt.ContainerStats,
                          pb.ContainerStatsRequest(container_id="nope"), C.NOT_FOUND)
        try:
            streamed = [p.id for batch in self.rt.StreamPodSandboxes(pb.StreamPodSandboxesRequest(),
                                                                      timeout=RPC_TIMEOUT)
                        for p in batch.pod_sandboxes]
            R.check("StreamPodSandboxes gives what ListPodSandbox gives", streamed == [pod_id], repr(streamed))
        except grpc.RpcError as err:
            R.check("StreamPodSandboxes succeeds", False, f"{err.code().name}: {err.details()}")
        try:
            for _ in self.rt.GetContainerEvents(pb.GetEventsRequest(), timeout=1):
                break
            R.check("GetContainerEvents streams (no event without containers)", False, "an event arrived")
        except grpc.RpcError as err:
            R.check("GetContainerEvents streams until the deadline", err.code() == C.DEADLINE_EXCEEDED,
                    f"{err.code().name}: {err.details()}")

        # ---- Prometheus endpoint ---------------------------------------
        self.check_metrics(pod_id)

        # ---- duplicate name -------------------------------------------
        self.expect_error("RunPodSandbox with the same metadata -> ALREADY_EXISTS", self.rt.RunPodSandbox,
                          pb.RunPodSandboxRequest(config=self.pod_config()), C.ALREADY_EXISTS,
                          timeout=RUN_POD_TIMEOUT)

        # ---- stop -----------------------------------------------------
        self.expect_ok("StopPodSandbox succeeds", self.rt.StopPodSandbox,
                       pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=STOP_POD_TIMEOUT)
        self.expect_ok("StopPodSandbox again succeeds (idempotent)", self.rt.StopPodSandbox,
                       pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=STOP_POD_TIMEOUT)
        st = self.expect_ok("PodSandboxStatus after stop succeeds", self.rt.PodSandboxStatus,
                            pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
        if st is not None:
            R.check("status after stop == SANDBOX_NOTREADY", st.status.state == pb.SANDBOX_NOTREADY,
                    pb.PodSandboxState.Name(st.status.state))
        families = self.scrape("metrics after stop")
        if families is not None:
            vms = self.metric_value(families, "frakti_vms", "frakti_vms", {})
            R.check("metrics after stop: frakti_vms == 0", vms == 0, repr(vms))
            cpu = self.metric_value(families, "frakti_pod_vm_host_cpu_seconds",
                                    "frakti_pod_vm_host_cpu_seconds_total", {"sandbox_id": pod_id})
            R.check("metrics after stop: no CPU series for the stopped pod", cpu is None, repr(cpu))
        if qemu_pid is not None:
            running, why = pid_running(qemu_pid, qemu_start)
            R.check(f"QEMU pid {qemu_pid} no longer running after stop", not running, why)
        else:
            R.skip("QEMU process gone after stop", "no running QEMU pid was learned from verbose status")

        # ---- remove ---------------------------------------------------
        self.expect_ok("RemovePodSandbox succeeds", self.rt.RemovePodSandbox,
                       pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=REMOVE_POD_TIMEOUT)
        self.expect_ok("RemovePodSandbox again succeeds (idempotent)", self.rt.RemovePodSandbox,
                       pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=REMOVE_POD_TIMEOUT)
        self.expect_error("PodSandboxStatus after remove -> NOT_FOUND", self.rt.PodSandboxStatus,
                          pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id), C.NOT_FOUND)
        lst = self.expect_ok("ListPodSandbox (no filter) after remove succeeds", self.rt.ListPodSandbox,
                             pb.ListPodSandboxRequest())
        if lst is not None:
            ids = [p.id for p in lst.items]
            R.check("ListPodSandbox no longer lists the removed pod", pod_id not in ids, repr(ids))

    # -- Prometheus endpoint --------------------------------------------

    def metrics_url(self, path="/metrics"):
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def scrape(self, name):
        """GET /metrics and parse it with prometheus_client's OpenMetrics parser."""
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
        try:
            with urllib.request.urlopen(self.metrics_url(), timeout=RPC_TIMEOUT) as resp:
                ctype = resp.headers.get("Content-Type", "")
                body = resp.read().decode()
        except (urllib.error.URLError, OSError) as e:
            R.check(f"{name}: GET /metrics answers", False, str(e))
            return None
        if not R.check(f"{name}: Content-Type is OpenMetrics text",
                       ctype.startswith("application/openmetrics-text"), repr(ctype)):
            return None
        try:
            families = {f.name: f for f in text_string_to_metric_families(body)}
        except Exception as e:  # the parser raises ValueError and friends
            R.check(f"{name}: the OpenMetrics parser accepts the text", False, f"{e}: {body[:400]!r}")
            return None
        R.check(f"{name}: the OpenMetrics parser accepts the text", True, f"{len(families)} families")
        return families

    @staticmethod
    def metric_value(families, family, sample, labels):
        """The value of the sample whose labels include `labels`, or None."""
        f = families.get(family)
        if f is None:
            return None
        for s in f.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        return None

    def check_metrics(self, pod_id):
        for path, method, want in (("/nope", "GET", 404), ("/metrics", "POST", 405)):
            req = urllib.request.Request(self.metrics_url(path), method=method, data=b"" if method == "POST" else None)
            try:
                urllib.request.urlopen(req, timeout=RPC_TIMEOUT)
                got = 200
            except urllib.error.HTTPError as e:
                got = e.code
            except (urllib.error.URLError, OSError) as e:
                got = str(e)
            R.check(f"metrics endpoint: {method} {path} -> {want}", got == want, repr(got))
        families = self.scrape("metrics")
        if families is None:
            return
        v = self.metric_value
        version = v(families, "frakti_cri_requests", "frakti_cri_requests_total",
                    {"service": "RuntimeService", "method": "Version", "code": "OK"})
        R.check("metrics: Version calls counted (>= 2) with code OK", version is not None and version >= 2,
                repr(version))
        nf = v(families, "frakti_cri_request_errors", "frakti_cri_request_errors_total",
               {"service": "RuntimeService", "method": "PodSandboxStatus", "code": "NotFound"})
        R.check("metrics: the PodSandboxStatus NotFound error is counted", nf is not None and nf >= 1, repr(nf))
        ok_errors = v(families, "frakti_cri_request_errors", "frakti_cri_request_errors_total", {"code": "OK"})
        R.check("metrics: no error series has code OK", ok_errors is None, repr(ok_errors))
        lat = v(families, "frakti_cri_request_duration_seconds", "frakti_cri_request_duration_seconds_count",
                {"service": "RuntimeService", "method": "RunPodSandbox"})
        R.check("metrics: RunPodSandbox latency observed", lat is not None and lat >= 1, repr(lat))
        pulls = v(families, "frakti_image_pull_bytes", "frakti_image_pull_bytes_total", {})
        R.check("metrics: the image pull byte counter is exposed", pulls is not None, repr(pulls))
        phases = {}
        for phase in ("network", "vm_boot", "agent_ready", "total"):
            labels = {"runtime": "vm", "phase": phase}
            count = v(families, "frakti_pod_start_duration_seconds", "frakti_pod_start_duration_seconds_count",
                      labels)
            phases[phase] = v(families, "frakti_pod_start_duration_seconds",
                              "frakti_pod_start_duration_seconds_sum", labels)
            R.check(f"metrics: pod start phase {phase} observed once", count == 1, repr(count))
        if None not in phases.values():
            R.check("metrics: the VM boot and agent phases fit in the total",
                    0 < phases["vm_boot"] + phases["agent_ready"] <= phases["total"], repr(phases))
        vms = v(families, "frakti_vms", "frakti_vms", {})
        R.check("metrics: frakti_vms == 1", vms == 1, repr(vms))
        cpu = v(families, "frakti_pod_vm_host_cpu_seconds", "frakti_pod_vm_host_cpu_seconds_total",
                {"sandbox_id": pod_id})
        R.check("metrics: the pod VM's host CPU seconds > 0", cpu is not None and cpu > 0, repr(cpu))
        rss = v(families, "frakti_pod_vm_host_memory_rss_bytes", "frakti_pod_vm_host_memory_rss_bytes",
                {"sandbox_id": pod_id})
        R.check("metrics: the pod VM's host RSS > 16 MiB", rss is not None and rss > 16 << 20, repr(rss))

    # -- cleanup --------------------------------------------------------

    def cleanup_pods(self):
        """Stop and remove every pod this test created (or the daemon lists)."""
        if self.rt is None or self.daemon is None or self.daemon.poll() is not None:
            if self.created:
                warn(f"daemon is not running; cannot remove pods {self.created}")
            return
        ids = list(self.created)
        resp, _ = self.rpc(self.rt.ListPodSandbox, self.pb.ListPodSandboxRequest())
        if resp is not None:
            # The root is fresh, so everything listed is ours.
            ids += [p.id for p in resp.items if p.id not in ids]
        for pod_id in ids:
            _, err = self.rpc(self.rt.StopPodSandbox, self.pb.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                              STOP_POD_TIMEOUT)
            if err is not None:
                warn(f"cleanup: StopPodSandbox {pod_id}: {err.code().name}: {err.details()}")
            _, err = self.rpc(self.rt.RemovePodSandbox, self.pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                              REMOVE_POD_TIMEOUT)
            if err is not None:
                warn(f"cleanup: RemovePodSandbox {pod_id}: {err.code().name}: {err.details()}")

    # -- main -----------------------------------------------------------

    def run(self):
        try:
            try:
                self.pb, self.pb_grpc = compile_proto(os.path.join(self.tmp, "gen"))
            except Exception as e:
                R.check("compile third_party/cri-api/api.proto with grpc_tools", False, str(e))
                return
            if not self.start_daemon() or not self.connect():
                return
            for t in (self.test_version, self.test_status, self.test_images,
                      self.test_invalid_and_unknown, self.test_pod_lifecycle):
                try:
                    t()
                except Exception:
                    R.check(f"{t.__name__} raised no unexpected exception", False, traceback.format_exc().strip())
        finally:
            try:
                self.cleanup_pods()
            except Exception:
                warn("cleanup failed: " + traceback.format_exc().strip())
            self.stop_daemon()
            self.reap_leaked_qemu()
            if R.failed and os.path.exists(self.log_path):
                print(f"---- last lines of the daemon log ({self.log_path}) ----")
                print(tail(self.log_path).rstrip())
                print("---- end of daemon log ----", flush=True)
            if os.environ.get("FRAKTI_KEEP_TMP") == "1":
                info(f"keeping {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
                if self.sock_dir != self.tmp:
                    shutil.rmtree(self.sock_dir, ignore_errors=True)


def _sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main():
    # Turn SIGTERM into an exception so the finally-cleanup still runs.
    signal.signal(signal.SIGTERM, _sigterm)
    CriTest().run()
    if R.skipped:
        print(f"{R.skipped} skipped", flush=True)
    print(f"{R.passed} passed, {R.failed} failed", flush=True)
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
