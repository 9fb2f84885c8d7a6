//! Just enough HTTP/1.0 for the GCE metadata server (`http://169.254.169.254/...`, plain
//! HTTP on the VM's own network): one GET for the instance ids, one PUT for the verdict guest
//! attribute, each with the `Metadata-Flavor: Google` header the server requires. Written by
//! hand: an HTTP client crate would bring TLS and a resolver the metadata server needs neither
//! of, into a binary that must stay small for the initramfs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `http://HOST[:PORT]/PATH` split into (host:port, path).
fn split(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    Ok((host, path.to_string()))
}

/// Sends one request; the response body, or an error naming the URL and the status.
fn request(method: &str, url: &str, body: &[u8]) -> Result<String, String> {
    let (host, path) = split(url)?;
    let mut s = TcpStream::connect(&host).map_err(|e| format!("{url}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(30))))
        .map_err(|e| format!("{url}: {e}"))?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {}\r\nMetadata-Flavor: Google\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        host.split(':').next().unwrap_or(&host),
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    s.write_all(&request).map_err(|e| format!("{url}: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| format!("{url}: {e}"))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or("");
    let code = status_line.split_whitespace().nth(1).unwrap_or("");
    if !code.starts_with('2') {
        return Err(format!("{url}: {status_line}"));
    }
    Ok(body.to_string())
}

/// GET `url`.
pub fn get(url: &str) -> Result<String, String> {
    request("GET", url, b"")
}

/// PUT `body` to `url`.
pub fn put(url: &str, body: &str) -> Result<(), String> {
    request("PUT", url, body.as_bytes()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(
            split("http://169.254.169.254/computeMetadata/v1/x").expect("ok"),
            ("169.254.169.254:80".into(), "/computeMetadata/v1/x".into())
        );
        assert_eq!(
            split("http://h:8080").expect("ok"),
            ("h:8080".into(), "/".into())
        );
        assert!(split("https://h/").is_err());
        assert!(split("http:///x").is_err());
    }

    #[test]
    fn a_get_and_a_put_against_a_loopback_server() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for reply in [
                "HTTP/1.0 200 OK\r\n\r\na~hvm64\nb~hvm64\n",
                "HTTP/1.0 403 Forbidden\r\n\r\n",
            ] {
                let (mut c, _) = l.accept().expect("accept");
                // Read the whole request: the head, then Content-Length bytes of body.
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let text = String::from_utf8_lossy(&got).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                    let n = c.read(&mut buf).expect("read");
                    assert!(n > 0, "the client closed early");
                    got.extend_from_slice(&buf[..n]);
                }
                seen.push(String::from_utf8_lossy(&got).into_owned());
                c.write_all(reply.as_bytes()).expect("write");
            }
            seen
        });
        let base = format!("http://127.0.0.1:{port}");
        assert_eq!(
            get(&format!("{base}/ids")).expect("get"),
            "a~hvm64\nb~hvm64\n"
        );
        let e = put(&format!("{base}/verdict"), "PASS").expect_err("403");
        assert!(e.contains("403"), "{e}");
        let seen = server.join().expect("server");
        assert!(
            seen[0].starts_with("GET /ids HTTP/1.0\r\n")
                && seen[0].contains("Metadata-Flavor: Google")
        );
        assert!(seen[1].starts_with("PUT /verdict") && seen[1].ends_with("\r\n\r\nPASS"));
    }
}
