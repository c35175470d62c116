#!/usr/bin/env python3
"""Extract the uncompressed ELF vmlinux from an x86 bzImage and check its PVH entry.

usage: extract-vmlinux.py BZIMAGE OUT

The bzImage carries its compressed kernel as a payload (boot protocol >= 2.08):
the protected-mode part starts at (setup_sects + 1) * 512 (setup_sects at 0x1f1,
0 meaning 4); payload_offset (0x248) and payload_length (0x24c) are relative to it.
The last 4 bytes of the payload hold the uncompressed size (little endian).
"""
import bz2
import lzma
import shutil
import struct
import subprocess
import sys
import zlib

XEN_ELFNOTE_PHYS32_ENTRY = 18


def payload_of(image: bytes) -> bytes:
    if image[0x202:0x206] != b"HdrS":
        sys.exit("not a bzImage: no HdrS signature at 0x202")
    (version,) = struct.unpack_from("<H", image, 0x206)
    if version < 0x208:
        sys.exit(f"boot protocol {version:#x} has no payload fields (need >= 2.08)")
    setup_sects = image[0x1F1] or 4
    pm_start = (setup_sects + 1) * 512
    offset, length = struct.unpack_from("<II", image, 0x248)
    payload = image[pm_start + offset : pm_start + offset + length]
    if len(payload) != length:
        sys.exit("payload runs past the end of the file")
    return payload


def stream(decomp, data: bytes) -> bytes:
    """Run a stdlib decompressor object; trailing bytes after the stream are ignored."""
    out = decomp.decompress(data)
    if not decomp.eof:
        sys.exit("compressed stream is truncated")
    return out


def cli(tool: str, data: bytes) -> bytes:
    if shutil.which(tool) is None:
        sys.exit(f"payload needs the '{tool}' command (apt-get install {tool})")
    # The kernel build appends the 4-byte size after these streams: strip it.
    return subprocess.run([tool, "-dc"], input=data[:-4], stdout=subprocess.PIPE, check=True).stdout


# (name, magic, decompress)
FORMATS = [
    ("gzip", b"\x1f\x8b", lambda d: stream(zlib.decompressobj(wbits=31), d)),
    ("xz", b"\xfd7zXZ\x00", lambda d: stream(lzma.LZMADecompressor(lzma.FORMAT_XZ), d)),
    ("lzma", b"\x5d\x00\x00", lambda d: stream(lzma.LZMADecompressor(lzma.FORMAT_ALONE), d)),
    ("bzip2", b"BZh", lambda d: stream(bz2.BZ2Decompressor(), d)),
    ("zstd", b"\x28\xb5\x2f\xfd", lambda d: cli("zstd", d)),
    ("lz4", b"\x02\x21\x4c\x18", lambda d: cli("lz4", d)),  # LZ4 legacy frame
    ("lzo", b"\x89LZO", lambda d: cli("lzop", d)),
]


def pvh_entry(elf: bytes):
    """Return the XEN_ELFNOTE_PHYS32_ENTRY address from the PT_NOTE segments, or None."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        sys.exit("decompressed kernel is not a little-endian ELF64")
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, n_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            desc_at = pos + 12 + (namesz + 3) // 4 * 4
            if name == b"Xen" and n_type == XEN_ELFNOTE_PHYS32_ENTRY:
                return int.from_bytes(elf[desc_at : desc_at + descsz], "little")
            pos = desc_at + (descsz + 3) // 4 * 4
    return None


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    src, dst = sys.argv[1:]
    with open(src, "rb") as f:
        payload = payload_of(f.read())
    for name, magic, decompress in FORMATS:
        if payload.startswith(magic):
            break
    else:
        sys.exit(f"unknown payload compression (magic {payload[:6].hex()})")
    elf = decompress(payload)
    (want,) = struct.unpack("<I", payload[-4:])
    if len(elf) != want:
        sys.exit(f"{name}: decompressed {len(elf)} bytes, the image says {want}")
    entry = pvh_entry(elf)
    if entry is None:
        sys.exit("vmlinux has no PVH entry note (Xen ELF note 18); the kernel needs CONFIG_PVH=y")
    with open(dst, "wb") as f:
        f.write(elf)
    print(f"vmlinux: {name} payload, {len(elf)} bytes, PVH entry {entry:#x}")


if __name__ == "__main__":
    main()
