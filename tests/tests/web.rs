//! The web app as chatd serves it (docs/WEB.md): the embedded build at `/` with its caching
//! and security headers, and `server.web_dir` (development) serving a directory without
//! letting a path leave it. The app itself is tested in a browser by `web/e2e`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use testkit::{Node, NodeOpts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One raw HTTP/1.1 GET (so the path reaches the server exactly as written).
async fn raw_get(node: &Node, path: &str) -> String {
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_embedded_app_is_served_with_caching_and_security_headers() {
    let node = Node::start();
    let http = reqwest::Client::new();
    let index = http.get(format!("{}/", node.http())).send().await.unwrap();
    assert_eq!(index.status(), 200);
    let h = index.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let etag = h["etag"].to_str().unwrap().to_owned();
    let body = index.text().await.unwrap();
    let script = body
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("index.html loads a script");
    assert!(script.starts_with("/assets/"), "{script}");

    let js = http
        .get(format!("{}{script}", node.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    assert_eq!(
        js.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );

    let again = http
        .get(format!("{}/", node.http()))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    // Unknown files and routes keep the JSON error body; the API is untouched.
    for path in ["/assets/nope.js", "/nope"] {
        let r = http
            .get(format!("{}{path}", node.http()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "not_found", "{path}");
    }
    let health = http
        .get(format!("{}/healthz", node.http()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn web_dir_serves_from_disk_and_stays_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("dist");
    std::fs::create_dir_all(root.join("assets")).unwrap();
    std::fs::write(root.join("index.html"), "<!doctype html><p>from disk</p>").unwrap();
    std::fs::write(root.join("assets/app-1.css"), "p{color:red}").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "not for the web").unwrap();
    let node = Node::start_with(NodeOpts::default().env("CHATD_SERVER__WEB_DIR", root.display()));
    let http = reqwest::Client::new();
    let index = http.get(format!("{}/", node.http())).send().await.unwrap();
    assert_eq!(index.status(), 200);
    assert_eq!(
        index.text().await.unwrap(),
        "<!doctype html><p>from disk</p>"
    );
    let css = http
        .get(format!("{}/assets/app-1.css", node.http()))
        .send()
        .await
        .unwrap();
    assert!(css.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
    assert_eq!(css.text().await.unwrap(), "p{color:red}");
    for path in [
        "/assets/../../secret.txt",
        "/assets/..%2f..%2fsecret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "/assets//etc/passwd",
    ] {
        let answer = raw_get(&node, path).await;
        assert!(!answer.contains("not for the web"), "{path}: {answer}");
        assert!(!answer.contains("root:"), "{path}: {answer}");
        assert!(
            answer.starts_with("HTTP/1.1 404") || answer.starts_with("HTTP/1.1 400"),
            "{path}: {answer}"
        );
    }
}
