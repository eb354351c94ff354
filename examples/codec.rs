//! Which codec and level pays on the wire: reads FILE... and, per file, cuts it into the
//! 1 MiB chunks the plugin sends and times zstd (levels 1 and 3) and gzip (levels 1 and 6)
//! on one core, plus the agent's decoder (pure-Rust zstd, as it runs on the node) on the
//! zstd-1 frames. Run by `bench/codec`, which makes the inputs; prints one table row per
//! file and codec.

use std::io::{Read, Write};
use std::time::Instant;

use sideload_agent::frames::{self, CHUNK, Deframer, RAW, ZSTD};

fn main() -> anyhow::Result<()> {
    let files: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(!files.is_empty(), "usage: codec FILE...");
    println!("| input | codec | ratio (wire / input) | encode MiB/s | decode MiB/s (node agent) |");
    println!("|---|---|---|---|---|");
    for path in &files {
        let data = std::fs::read(path)?;
        let name = std::path::Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mib = data.len() as f64 / (1 << 20) as f64;
        for level in [1, 3] {
            let mut c = zstd::bulk::Compressor::new(level)?;
            let start = Instant::now();
            let mut wire = Vec::with_capacity(data.len() + data.len() / 64);
            for chunk in data.chunks(CHUNK) {
                let z = c.compress(chunk)?;
                let (tag, payload) = if frames::pays(z.len(), chunk.len()) {
                    (ZSTD, &z[..])
                } else {
                    (RAW, chunk)
                };
                wire.extend_from_slice(&frames::header(tag, payload.len(), chunk.len()));
                wire.extend_from_slice(payload);
            }
            let encode = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let mut back = Vec::with_capacity(data.len());
            Deframer::new(&wire[..]).read_to_end(&mut back)?;
            let decode = start.elapsed().as_secs_f64();
            anyhow::ensure!(back == data, "zstd {level}: decoded bytes differ");
            println!(
                "| {name} | zstd {level} (raw where < 10 % saved) | {:.3} | {:.0} | {:.0} |",
                wire.len() as f64 / data.len() as f64,
                mib / encode,
                mib / decode
            );
        }
        for level in [1, 6] {
            let start = Instant::now();
            let mut wire = 0usize;
            for chunk in data.chunks(CHUNK) {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
                e.write_all(chunk)?;
                wire += e.finish()?.len().min(chunk.len());
            }
            let encode = start.elapsed().as_secs_f64();
            println!(
                "| {name} | gzip {level} | {:.3} | {:.0} | (not used) |",
                wire as f64 / data.len() as f64,
                mib / encode
            );
        }
    }
    Ok(())
}
