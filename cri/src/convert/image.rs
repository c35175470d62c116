//! Image configs: the process defaults a container inherits from its image.

use pods::container::ImageProcess;

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Process defaults from an OCI image config (`config.Entrypoint`, …).
pub fn image_process(image_config: &serde_json::Value) -> ImageProcess {
    let c = &image_config["config"];
    let text = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
    ImageProcess {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        working_dir: text("WorkingDir"),
        user: text("User"),
        stop_signal: text("StopSignal"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_config_process() {
        let config = serde_json::json!({
            "architecture": "amd64",
            "config": {
                "Entrypoint": ["/docker-entrypoint.sh"],
                "Cmd": ["nginx", "-g", "daemon off;"],
                "Env": ["PATH=/usr/bin"],
                "WorkingDir": "/srv",
                "User": "101:101",
                "StopSignal": "SIGQUIT"
            }
        });
        let p = image_process(&config);
        assert_eq!(p.entrypoint, vec!["/docker-entrypoint.sh"]);
        assert_eq!(p.cmd, vec!["nginx", "-g", "daemon off;"]);
        assert_eq!(p.env, vec!["PATH=/usr/bin"]);
        assert_eq!(p.working_dir, "/srv");
        assert_eq!(p.user, "101:101");
        assert_eq!(p.stop_signal, "SIGQUIT");
        let empty = image_process(&serde_json::json!({"config": {"Entrypoint": null}}));
        assert_eq!(empty, ImageProcess::default());
    }
}
