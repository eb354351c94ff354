//! Facts about the host, read without running any host program: which sockets and
//! binaries exist, the text of configuration files, and HTTP answers from a runtime's
//! socket (CRI-O serves its running configuration at `GET /config`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use sideload_agent::protocol::{self, Answer, HttpGet, HttpResponse, PathFact, PathKind, Query};

use crate::host;

/// The facts part of a query (the caller has entered the host root).
pub fn gather(request: &Query) -> Answer {
    let mut facts = Answer {
        agent: protocol::version(),
        ..Default::default()
    };
    for path in &request.paths {
        facts.paths.insert(path.clone(), stat(path));
    }
    for path in &request.files {
        facts.files.insert(path.clone(), read_file(path).into());
    }
    for path in &request.dirs {
        facts.dirs.insert(path.clone(), list_dir(path).into());
    }
    facts.http = request.http.iter().map(|g| http_get(g).into()).collect();
    facts
}

fn stat(path: &str) -> PathFact {
    let missing = PathFact {
        kind: PathKind::Missing,
        executable: false,
    };
    if host::absolute(path).is_err() {
        return missing;
    }
    // Following links: /usr/bin/crictl is often a link into a versioned directory.
    let Ok(meta) = std::fs::metadata(path) else {
        return missing;
    };
    let t = meta.file_type();
    let kind = if t.is_socket() {
        PathKind::Socket
    } else if t.is_dir() {
        PathKind::Dir
    } else if t.is_file() {
        PathKind::File
    } else {
        PathKind::Other
    };
    PathFact {
        kind,
        executable: t.is_file() && meta.permissions().mode() & 0o111 != 0,
    }
}

fn read_file(path: &str) -> Result<String, String> {
    host::absolute(path)?;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(protocol::MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > protocol::MAX_FILE {
        return Err(format!("larger than {} bytes", protocol::MAX_FILE));
    }
    Ok(text)
}

fn list_dir(path: &str) -> Result<Vec<String>, String> {
    host::absolute(path)?;
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// An HTTP/1.1 GET over a unix socket, `Connection: close`, body read to the end (plain
/// or chunked: Go's net/http chunks bodies it did not buffer whole).
fn http_get(get: &HttpGet) -> Result<HttpResponse, String> {
    host::absolute(&get.socket)?;
    if !get.path.starts_with('/') || get.path.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(format!("bad request path {:?}", get.path));
    }
    let mut stream = UnixStream::connect(&get.socket).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(10))))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: sideload-agent\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        get.path
    )
    .map_err(|e| e.to_string())?;
    let limited = stream.take(protocol::MAX_FILE + 64 * 1024);
    parse_response(BufReader::new(limited))
}

fn parse_response(mut reader: impl BufRead) -> Result<HttpResponse, String> {
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", line.trim_end()))?;
    let mut chunked = false;
    let mut length: Option<u64> = None;
    loop {
        line.clear();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().ok();
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            let size_text = line.trim_end().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size_text, 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            if size == 0 {
                break;
            }
            let mut chunk = Vec::new();
            (&mut reader)
                .take(size)
                .read_to_end(&mut chunk)
                .map_err(|e| e.to_string())?;
            if chunk.len() as u64 != size {
                return Err("response cut short".into());
            }
            body.extend_from_slice(&chunk);
            line.clear();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
        }
    } else {
        let mut limited: Box<dyn Read> = match length {
            Some(n) => Box::new((&mut reader).take(n)),
            None => Box::new(&mut reader),
        };
        limited.read_to_end(&mut body).map_err(|e| e.to_string())?;
        if length.is_some_and(|n| body.len() as u64 != n) {
            return Err("response cut short".into());
        }
    }
    if body.len() as u64 > protocol::MAX_FILE {
        return Err(format!("response larger than {} bytes", protocol::MAX_FILE));
    }
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let r = parse_response(&plain[..]).unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "hello"));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[cri\r\n3;x=y\r\no]\n\r\n0\r\n\r\n";
        let r = parse_response(&chunked[..]).unwrap();
        assert_eq!(r.body, "[crio]\n");
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello";
        assert!(parse_response(&short[..]).is_err());
        assert!(parse_response(&b"garbage\r\n\r\n"[..]).is_err());
    }

    #[test]
    fn http_over_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("agent-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // The request may arrive in several reads (CI once saw a partial first read).
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                assert!(n > 0, "the request ended early: {req:?}");
                req.extend_from_slice(&buf[..n]);
            }
            assert!(
                std::str::from_utf8(&req)
                    .unwrap()
                    .starts_with("GET /config ")
            );
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
        });
        let got = http_get(&HttpGet {
            socket: sock.to_string_lossy().into_owned(),
            path: "/config".into(),
        })
        .unwrap();
        server.join().unwrap();
        assert_eq!(got.body, "ok");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn stat_kinds() {
        assert_eq!(stat("/bin/sh").kind, PathKind::File);
        assert!(stat("/bin/sh").executable);
        assert_eq!(stat("/").kind, PathKind::Dir);
        assert_eq!(stat("/nonexistent").kind, PathKind::Missing);
        assert_eq!(stat("relative").kind, PathKind::Missing);
    }
}
