//! The gateway's configuration loading (`Config::load`: defaults, then a TOML file, as
//! `chatd --config` does) on a file made from arbitrary bytes: an error or a value, never a
//! panic. A configuration that loads prints (`redacted`, logged at start-up), and printed
//! as TOML it loads back to the same value.
#![no_main]

use gateway::config::Config;
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn file() -> &'static Path {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| {
        // Only the file is under test: CHATD_SECTION__KEY variables would override it.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CHATD_") {
                std::env::remove_var(k);
            }
        }
        let d = tempfile::Builder::new()
            .prefix("chatd-fuzz-config-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"))
            .keep();
        d.join("chatd.toml")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = file();
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write: {e}"));
    let Ok(config) = Config::load(Some(path)) else {
        return;
    };
    let shown = config.redacted();
    assert!(!shown.starts_with("<unprintable"), "{shown}");
    // What is printed does not depend on the secret.
    let mut other = config.clone();
    other.auth.jwt_secret = config
        .auth
        .jwt_secret
        .as_ref()
        .map(|s| format!("{s}-other"));
    assert_eq!(other.redacted(), shown, "redacted() shows the secret");
    // Printing can fail only for values TOML cannot hold; what came from TOML is not one.
    let text = toml::to_string(&config).unwrap_or_else(|e| panic!("cannot print: {e}"));
    std::fs::write(path, &text).unwrap_or_else(|e| panic!("write: {e}"));
    match Config::load(Some(path)) {
        Ok(back) => assert_eq!(back, config, "printed config loads differently:\n{text}"),
        Err(e) => panic!("printed config does not load: {e}\n{text}"),
    }
});
