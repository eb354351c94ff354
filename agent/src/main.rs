//! sideload-agent: the helper pod's only program (see lib.rs for why it exists).
//!
//! `sideload-agent <verb> [<request JSON>]`; the verbs and requests are in
//! `sideload_agent::protocol`. Before it resolves any path the agent enters the host root
//! (`/host`), so no file of the image the container started from is ever opened, and every
//! host command gets a fixed environment instead of the container's.

mod commands;
mod facts;
mod host;
mod ocidir;
mod pause;
mod run;
mod stream;
#[cfg(test)]
mod testutil;

use std::io::Write;
use std::process::ExitCode;

use sideload_agent::protocol::{self, verb};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (verb, request) = match args.as_slice() {
        [verb] => (verb.as_str(), None),
        [verb, request] => (verb.as_str(), Some(request.as_str())),
        _ => return fail("usage: sideload-agent <verb> [<request json>]"),
    };
    let result = match verb {
        verb::VERSION => {
            println!("{}", protocol::version());
            Ok(0)
        }
        verb::PAUSE => pause::run(),
        verb::SESSION => session(),
        verb::RUN => parse(request).and_then(|r| run::run(&r)),
        other => Err(format!("unknown verb {other:?}")),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255)),
        Err(message) => fail(&message),
    }
}

/// Facts, then commands, all in the host root (entered already).
fn respond(request: &protocol::Query) -> protocol::Answer {
    let mut answer = facts::gather(request);
    answer.results = request.commands.iter().map(commands::run).collect();
    answer
}

/// Queries read line by line from stdin, answered as they come, after one entry into the
/// host root: the plugin's questions about a node cost one exec, not one each.
fn session() -> Result<i32, String> {
    use std::io::{BufRead, Read};
    host::enter()?;
    let mut stdin = std::io::stdin().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut stdin)
            .take(protocol::MAX_SESSION_LINE + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading a request: {e}"))?;
        if n as u64 > protocol::MAX_SESSION_LINE {
            return Err(format!(
                "a request line is longer than {} bytes",
                protocol::MAX_SESSION_LINE
            ));
        }
        let text = std::str::from_utf8(&line).map_err(|_| "a request is not UTF-8")?;
        if text.trim().is_empty() {
            // An empty line, or the end of stdin: the session is over.
            return Ok(0);
        }
        let request: protocol::Query =
            serde_json::from_str(text).map_err(|e| format!("bad request: {e}"))?;
        answer(&respond(&request))?;
    }
}

fn parse<T: serde::de::DeserializeOwned>(request: Option<&str>) -> Result<T, String> {
    let text = request.ok_or("this verb needs a request")?;
    serde_json::from_str(text).map_err(|e| format!("bad request: {e}"))
}

/// Writes the answer as one JSON document on stdout.
fn answer<T: serde::Serialize>(value: &T) -> Result<i32, String> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value).map_err(|e| format!("writing the answer: {e}"))?;
    out.write_all(b"\n")
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing the answer: {e}"))?;
    Ok(0)
}

fn fail(message: &str) -> ExitCode {
    eprintln!("sideload-agent: {message}");
    ExitCode::from(protocol::AGENT_FAILED as u8)
}
