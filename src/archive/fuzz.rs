//! A bounded fuzz of the archive reader (issue 11). Seeds of every layout `Archive::open`
//! reads are mutated member by member (hostile names, links, duplicates, JSON edits,
//! content, optionally re-hashed so the digests agree again and the edit reaches the
//! resolver) or byte by byte (header fields with and without a fixed checksum, declared
//! sizes, flips, cuts, splices). Every input must open to an archive or a typed error with
//! a message, never panic, never make an allocation larger than one metadata document, and
//! read the same from a file and from stdin; an archive that opens must stream exactly the
//! bytes it announces, every blob its digest, whole or cut into parts. Hand-made cases
//! follow for what mutations reach only by luck.
//!
//! Deterministic: a fixed number of cases from a fixed seed, about 5 s in a debug build on
//! two cores. For a longer hunt, raise both:
//! `SIDELOAD_FUZZ_CASES=20000 SIDELOAD_FUZZ_SEED=$RANDOM cargo test --release archive::fuzz`.
//! proptest saves a failing case's seed in `proptest-regressions/archive/fuzz.txt` and runs
//! it first every time after: commit that file, fix the reader, and keep the input as a
//! named test in `tests.rs`.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, RngSeed};
use serde_json::{Value, json};

use super::layout::sha256_digest;
use super::scan::{CHUNK, clean};
use super::spec::{self, JSON_LIMIT};
use super::tests::{
    assert_message_style, check_tar, check_write, data_offset, no_skip, open_bytes, open_err,
    open_ok, patch_size,
};
use super::testutil::*;
use super::*;

/// The largest single allocation `open` may make: one metadata document (containerd's JSON
/// limit, which the scanner keeps to), plus slack for its read buffers.
const ALLOC_CEILING: usize = JSON_LIMIT as usize + 4 * CHUNK;

/// Cases per property in a plain `cargo test`: 4 to 8 ms each in a debug build.
const CASES: u32 = 400;

/// `cases` per property unless `SIDELOAD_FUZZ_CASES` says otherwise, from seed 11 unless
/// `SIDELOAD_FUZZ_SEED` says otherwise.
fn config(cases: u32) -> Config {
    let env = |key: &str| std::env::var(key).ok().and_then(|v| v.parse().ok());
    Config {
        cases: env("SIDELOAD_FUZZ_CASES").map_or(cases, |n: u64| n as u32),
        rng_seed: RngSeed::Fixed(env("SIDELOAD_FUZZ_SEED").unwrap_or(11)),
        max_shrink_time: 120_000,
        ..Config::default()
    }
}

// ---- the seed corpus ----

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Encoding {
    Tar,
    /// Every member behind a PAX header carrying its path and size (`Members::tar_pax`).
    Pax,
    /// The tar gzip-compressed as a whole.
    Gzip,
}

struct Seed {
    members: Members,
    encoding: Encoding,
}

static SEEDS: LazyLock<Vec<Seed>> = LazyLock::new(|| {
    let plain = TestImage::new(1, "linux/amd64", 2, 1_500);
    let gz_layers = TestImage::gzipped(4, "linux/amd64", 2, 1_500);
    let arm = TestImage::new(5, "linux/arm64/v8", 2, 1_200);
    let amd = TestImage::new(6, "linux/amd64", 1, 1_000);
    let named = |img: &TestImage| {
        annotated(
            img.descriptor(),
            &[
                ("io.containerd.image.name", "docker.io/library/app:v2"),
                ("org.opencontainers.image.ref.name", "v2"),
            ],
        )
    };
    let bare_tag = annotated(
        gz_layers.descriptor(),
        &[("org.opencontainers.image.ref.name", "v1")],
    );
    let multi = multi_platform(&[&amd, &arm], &[&amd, &arm], "docker.io/library/app:v2");
    let docker = docker_archive(&plain, &["app:v2", "app:latest"]);
    let seeds = [
        (docker.clone(), Encoding::Tar),
        (docker_archive_with_shared_layer(2), Encoding::Tar),
        (skopeo_docker_archive(&arm, &["user/app"]), Encoding::Tar),
        (docker_archive(&gz_layers, &["app:gz"]), Encoding::Tar),
        (docker_with_long_names(&plain), Encoding::Tar),
        (docker.clone(), Encoding::Pax),
        (docker, Encoding::Gzip),
        (oci_archive(&[&arm], vec![named(&arm)]), Encoding::Tar),
        (oci_archive(&[&gz_layers], vec![bare_tag]), Encoding::Tar),
        (docker25_archive(&plain, "app:v2", "v2"), Encoding::Tar),
        (docker25_archive(&arm, "app:v2", "v2"), Encoding::Gzip),
        (multi.clone(), Encoding::Tar),
        (multi, Encoding::Pax),
        (
            multi_platform(&[&amd, &arm], &[&amd], "docker.io/library/app:v2"),
            Encoding::Tar,
        ),
    ];
    seeds
        .into_iter()
        .map(|(members, encoding)| Seed { members, encoding })
        .collect()
});

/// docker save with layer directories named past 100 bytes: GNU long-name entries.
fn docker_with_long_names(img: &TestImage) -> Members {
    let mut m = docker_archive(img, &["app:v2"]);
    let ids: Vec<String> =
        m.0.iter()
            .filter_map(|(p, _)| p.strip_suffix("/layer.tar").map(str::to_owned))
            .collect();
    for (path, content) in &mut m.0 {
        for id in &ids {
            let long = format!("{id}-{}", "long".repeat(15));
            *path = path.replace(id.as_str(), &long);
            if let Content::File(bytes) = content
                && (path == "manifest.json" || path.ends_with("/json"))
            {
                let text = String::from_utf8_lossy(bytes).replace(id.as_str(), &long);
                *bytes = text.into_bytes();
            }
        }
    }
    m
}

fn encode(m: &Members, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Pax => m.tar_pax(),
        Encoding::Tar | Encoding::Gzip => m.tar(),
    }
}

// ---- mutations ----

/// One fuzz input: a seed, edits to its members, damage to its bytes.
#[derive(Clone, Debug)]
struct Case {
    seed: Index,
    edits: Vec<Edit>,
    /// After the edits, rename blobs after their new content and update every reference
    /// (digests, sizes, diff_ids, paths), so the edit is seen past the digest checks.
    rehash: bool,
    damage: Vec<Damage>,
    /// Gzip the result (Gzip seeds always are).
    gzip: bool,
    /// Then flip bits in the compressed bytes.
    gzip_flip: Option<(Index, u8)>,
}

#[derive(Clone, Debug)]
enum Edit {
    Rename(Index, Hostile),
    Duplicate {
        from: Index,
        to: Index,
        altered: bool,
    },
    Remove(Index),
    Move(Index, Index),
    /// Turn a member into a symlink.
    Link(Index, Target),
    /// Two members linked to each other.
    LinkPair(Index, Index),
    /// Set one value (any depth, the root too) of a JSON member.
    Json {
        member: Index,
        at: Index,
        value: JsonValue,
    },
    /// Drop one key or element of a JSON member.
    JsonRemove {
        member: Index,
        at: Index,
    },
    Byte {
        member: Index,
        at: Index,
        value: u8,
    },
    /// Cut or extend (with zeros) a member to up to twice its length.
    Resize {
        member: Index,
        len: Index,
    },
}

/// A name a member is renamed to.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// `../<name>`
    Parent,
    /// `/<name>`
    Absolute,
    /// `a/../../<name>`
    Escape,
    /// `a/../<name>`, which cleans to the name itself.
    Inside,
    Fixed(&'static str),
}

const HOSTILE_NAMES: &[&str] = &[
    "../x",
    "/etc/x",
    "a/../../b",
    "/etc/passwd",
    "manifest.json",
    "index.json",
    "oci-layout",
    "repositories",
];

#[derive(Clone, Debug)]
enum Target {
    Itself,
    Member(Index),
    Outside(&'static str),
}

const OUTSIDE: &[&str] = &[
    "/etc/passwd",
    "../../../../etc/passwd",
    "..",
    "../",
    "a/b/../../../../x",
    "/",
];

#[derive(Clone, Debug)]
enum JsonValue {
    Fixed(Value),
    /// The digest, size or path of some member (wrong content, most likely).
    DigestOf(Index),
    SizeOf(Index),
    PathOf(Index),
}

fn json_values() -> Vec<Value> {
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    vec![
        json!("../x"),
        json!("/etc/passwd"),
        json!("a/../../b"),
        json!("blobs/sha256/../../../etc/passwd"),
        json!("manifest.json"),
        json!("index.json"),
        json!(""),
        json!(format!("sha256:{}", "0".repeat(64))),
        json!("sha256:zz"),
        json!("sha256:../../etc/passwd"),
        json!(u64::MAX),
        json!(-1),
        json!(0),
        json!(1e300),
        json!(1u64 << 40),
        Value::Null,
        json!([]),
        json!({}),
        json!(true),
        json!(spec::OCI_INDEX),
        json!(spec::OCI_MANIFEST),
        json!(spec::DOCKER_MANIFEST_LIST),
        json!(spec::DOCKER_MANIFEST),
        json!("application/vnd.oci.image.layer.v1.tar+gzip"),
        json!({"os": "unknown", "architecture": "unknown"}),
        json!({"os": "linux", "architecture": ""}),
        json!("\u{1b}[2J\u{7}"),
        json!("x".repeat(5_000)),
        json!("app:v2"),
        json!(format!("docker.io/library/x@sha256:{}", "0".repeat(64))),
        json!("2.0.0"),
        deep,
    ]
}

#[derive(Clone, Debug)]
enum Damage {
    Flip {
        at: Index,
        mask: u8,
    },
    /// Overwrite part of a header; `fix` recomputes its checksum so the tar reader takes it.
    Header {
        header: Index,
        field: Field,
        fix: bool,
    },
    /// Declare another size (checksum fixed).
    Size {
        header: Index,
        size: SizeTo,
    },
    /// A zero block where a header was: an early end of the archive.
    ZeroHeader(Index),
    Truncate(Index),
    /// This seed's bytes up to `here`, another's from `there`.
    Splice {
        other: Index,
        here: Index,
        there: Index,
        aligned: bool,
    },
    Append(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Field {
    Byte(Index, u8),
    Type(u8),
    Name(&'static str),
    Link(&'static str),
    Magic(&'static [u8; 8]),
    SizeText(&'static [u8; 12]),
}

#[derive(Clone, Copy, Debug)]
enum SizeTo {
    Exactly(u64),
    /// The current size plus this many 512-byte blocks (negative: fewer).
    Blocks(i8),
    /// The current size plus a few bytes (negative: fewer).
    Bytes(i8),
}

const TYPES: &[u8] = b"0125LKxgS7\0Z";
const MAGICS: &[&[u8; 8]] = &[
    b"ustar  \0",
    b"ustar\x0000",
    b"\0\0\0\0\0\0\0\0",
    b"garbage!",
];
const SIZE_TEXTS: &[&[u8; 12]] = &[
    b"77777777777\0",
    b"\x80\0\0\0\0\0\0\x01\0\0\0\0",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
    b"-0000000001\0",
    b"0x0000000010",
    b"           \0",
    b"99999999999\0",
    b"00000001000 ",
];
const HUGE: &[u64] = &[
    4 << 30,
    (4 << 30) + 1,
    1 << 33,
    1 << 40,
    u64::MAX >> 1,
    u64::MAX,
    JSON_LIMIT,
    JSON_LIMIT + 1,
    0,
];

fn edit() -> impl Strategy<Value = Edit> {
    let i = any::<Index>;
    let hostile = prop_oneof![
        Just(Hostile::Parent),
        Just(Hostile::Absolute),
        Just(Hostile::Escape),
        Just(Hostile::Inside),
        select(HOSTILE_NAMES).prop_map(Hostile::Fixed),
    ];
    let target = prop_oneof![
        Just(Target::Itself),
        i().prop_map(Target::Member),
        select(OUTSIDE).prop_map(Target::Outside),
    ];
    let value = prop_oneof![
        4 => select(json_values()).prop_map(JsonValue::Fixed),
        1 => i().prop_map(JsonValue::DigestOf),
        1 => i().prop_map(JsonValue::SizeOf),
        1 => i().prop_map(JsonValue::PathOf),
    ];
    prop_oneof![
        2 => (i(), hostile).prop_map(|(m, h)| Edit::Rename(m, h)),
        1 => (i(), i(), any::<bool>())
            .prop_map(|(from, to, altered)| Edit::Duplicate { from, to, altered }),
        1 => i().prop_map(Edit::Remove),
        1 => (i(), i()).prop_map(|(a, b)| Edit::Move(a, b)),
        2 => (i(), target).prop_map(|(m, t)| Edit::Link(m, t)),
        1 => (i(), i()).prop_map(|(a, b)| Edit::LinkPair(a, b)),
        6 => (i(), i(), value).prop_map(|(member, at, value)| Edit::Json { member, at, value }),
        2 => (i(), i()).prop_map(|(member, at)| Edit::JsonRemove { member, at }),
        1 => (i(), i(), any::<u8>()).prop_map(|(member, at, value)| Edit::Byte {
            member,
            at,
            value
        }),
        1 => (i(), i()).prop_map(|(member, len)| Edit::Resize { member, len }),
    ]
}

fn damage() -> impl Strategy<Value = Damage> {
    let i = any::<Index>;
    let field = prop_oneof![
        (i(), any::<u8>()).prop_map(|(at, b)| Field::Byte(at, b)),
        select(TYPES).prop_map(Field::Type),
        select(HOSTILE_NAMES).prop_map(Field::Name),
        select(OUTSIDE).prop_map(Field::Link),
        select(MAGICS).prop_map(Field::Magic),
        select(SIZE_TEXTS).prop_map(Field::SizeText),
    ];
    let size = prop_oneof![
        select(HUGE).prop_map(SizeTo::Exactly),
        any::<i8>().prop_map(SizeTo::Blocks),
        any::<i8>().prop_map(SizeTo::Bytes),
    ];
    prop_oneof![
        2 => (i(), 1..=255u8).prop_map(|(at, mask)| Damage::Flip { at, mask }),
        4 => (i(), field, proptest::bool::weighted(0.8))
            .prop_map(|(header, field, fix)| Damage::Header { header, field, fix }),
        3 => (i(), size).prop_map(|(header, size)| Damage::Size { header, size }),
        1 => i().prop_map(Damage::ZeroHeader),
        1 => i().prop_map(Damage::Truncate),
        1 => (i(), i(), i(), any::<bool>()).prop_map(|(other, here, there, aligned)| {
            Damage::Splice { other, here, there, aligned }
        }),
        1 => vec(any::<u8>(), 1..1100).prop_map(Damage::Append),
    ]
}

fn gzip_flip() -> impl Strategy<Value = Option<(Index, u8)>> {
    proptest::option::weighted(0.2, (any::<Index>(), 1..=255u8))
}

fn member_case() -> impl Strategy<Value = Case> {
    (
        any::<Index>(),
        vec(edit(), 1..4),
        any::<bool>(),
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(seed, edits, rehash, gzip)| Case {
            seed,
            edits,
            rehash,
            damage: Vec::new(),
            gzip,
            gzip_flip: None,
        })
}

fn byte_case() -> impl Strategy<Value = Case> {
    (
        any::<Index>(),
        vec(damage(), 1..4),
        proptest::bool::weighted(0.2),
        gzip_flip(),
    )
        .prop_map(|(seed, damage, gzip, gzip_flip)| Case {
            seed,
            edits: Vec::new(),
            rehash: false,
            damage,
            gzip,
            gzip_flip,
        })
}

// ---- applying them ----

fn build(case: &Case) -> Vec<u8> {
    let seed = &SEEDS[case.seed.index(SEEDS.len())];
    let mut m = seed.members.clone();
    let mut changed = Vec::new();
    for e in &case.edits {
        apply(&mut m, e, &mut changed);
    }
    if case.rehash {
        rehash(&mut m, changed);
    }
    let mut bytes = encode(&m, seed.encoding);
    for d in &case.damage {
        damage_bytes(&mut bytes, d);
    }
    if case.gzip || seed.encoding == Encoding::Gzip {
        bytes = gzip(&bytes);
        if let Some((at, mask)) = case.gzip_flip {
            let at = at.index(bytes.len());
            bytes[at] ^= mask;
        }
    }
    bytes
}

/// `(old sha256 hex, new sha256 hex, new size)` of a member whose content an edit changed.
type Changed = Vec<(String, String, u64)>;

fn hex_of(bytes: &[u8]) -> String {
    hex(&sha256_digest(bytes)).to_owned()
}

/// Directory of an archive path, as `scan` resolves symlinks against it.
fn depth(path: &str) -> usize {
    clean(path).matches('/').count()
}

/// A symlink target at `from` that resolves to the member `to`.
fn relative(from: &str, to: &str) -> String {
    format!("{}{}", "../".repeat(depth(from)), clean(to))
}

fn apply(m: &mut Members, e: &Edit, changed: &mut Changed) {
    let n = m.0.len();
    if n == 0 {
        return;
    }
    match e {
        Edit::Rename(i, hostile) => {
            let (path, content) = &mut m.0[i.index(n)];
            let name = match hostile {
                Hostile::Parent => format!("../{path}"),
                Hostile::Absolute => format!("/{path}"),
                Hostile::Escape => format!("a/../../{path}"),
                Hostile::Inside => format!("a/../{path}"),
                Hostile::Fixed(s) => (*s).to_owned(),
            };
            // `Members::tar` writes hostile names raw, into the 100-byte name field, and the
            // tar crate refuses to write a link under such a name.
            if name.len() <= 100 && matches!(content, Content::File(_)) {
                *path = name;
            }
        }
        Edit::Duplicate { from, to, altered } => {
            let mut copy = m.0[from.index(n)].clone();
            if let (true, Content::File(bytes)) = (altered, &mut copy.1)
                && let Some(b) = bytes.first_mut()
            {
                *b ^= 0x20;
            }
            m.0.insert(to.index(n + 1), copy);
        }
        Edit::Remove(i) => {
            m.0.remove(i.index(n));
        }
        Edit::Move(a, b) => {
            let member = m.0.remove(a.index(n));
            m.0.insert(b.index(n), member);
        }
        Edit::Link(i, target) => {
            let i = i.index(n);
            let path = m.0[i].0.clone();
            let target = match target {
                Target::Itself => relative(&path, &path),
                Target::Member(j) => relative(&path, &m.0[j.index(n)].0),
                Target::Outside(s) => (*s).to_owned(),
            };
            link(m, i, target);
        }
        Edit::LinkPair(a, b) => {
            let (a, b) = (a.index(n), b.index(n));
            let (pa, pb) = (m.0[a].0.clone(), m.0[b].0.clone());
            link(m, a, relative(&pa, &pb));
            link(m, b, relative(&pb, &pa));
        }
        Edit::Json { member, at, value } => {
            let value = match value {
                JsonValue::Fixed(v) => v.clone(),
                JsonValue::DigestOf(j) => match &m.0[j.index(n)].1 {
                    Content::File(b) => json!(sha256_digest(b)),
                    Content::Symlink(t) => json!(t),
                },
                JsonValue::SizeOf(j) => match &m.0[j.index(n)].1 {
                    Content::File(b) => json!(b.len()),
                    Content::Symlink(_) => json!(0),
                },
                JsonValue::PathOf(j) => json!(m.0[j.index(n)].0),
            };
            edit_json(m, *member, changed, |doc| {
                let pointers = pointers(doc);
                let p = &pointers[at.index(pointers.len())];
                *doc.pointer_mut(p).expect("listed just now") = value;
            });
        }
        Edit::JsonRemove { member, at } => {
            edit_json(m, *member, changed, |doc| {
                let pointers = pointers(doc);
                let p = &pointers[at.index(pointers.len())];
                let Some((parent, key)) = p.rsplit_once('/') else {
                    return; // the root
                };
                let key = key.replace("~1", "/").replace("~0", "~");
                match doc.pointer_mut(parent) {
                    Some(Value::Object(o)) => {
                        o.remove(&key);
                    }
                    Some(Value::Array(a)) => {
                        if let Ok(k) = key.parse::<usize>() {
                            a.remove(k);
                        }
                    }
                    _ => {}
                }
            });
        }
        Edit::Byte { member, at, value } => {
            edit_bytes(m, *member, changed, |bytes| {
                if !bytes.is_empty() {
                    let at = at.index(bytes.len());
                    bytes[at] = *value;
                }
            });
        }
        Edit::Resize { member, len } => {
            edit_bytes(m, *member, changed, |bytes| {
                let len = len.index(bytes.len() * 2 + 2);
                bytes.resize(len, 0);
            });
        }
    }
}

fn link(m: &mut Members, i: usize, target: String) {
    if target.is_empty() {
        return;
    }
    let (path, content) = &mut m.0[i];
    if path.contains("..") || path.starts_with('/') {
        return; // the tar crate writes no link under such a name
    }
    *content = Content::Symlink(target);
}

/// Changes the bytes of a regular member, noting the change for `rehash`.
fn edit_bytes(m: &mut Members, i: Index, changed: &mut Changed, f: impl FnOnce(&mut Vec<u8>)) {
    let n = m.0.len();
    if let Content::File(bytes) = &mut m.0[i.index(n)].1 {
        let old = hex_of(bytes);
        f(bytes);
        changed.push((old, hex_of(bytes), bytes.len() as u64));
    }
}

/// Changes one of the members that hold JSON (picked by `i` among them).
fn edit_json(m: &mut Members, i: Index, changed: &mut Changed, f: impl FnOnce(&mut Value)) {
    let json: Vec<usize> = (0..m.0.len())
        .filter(|&k| match &m.0[k].1 {
            Content::File(b) => serde_json::from_slice::<Value>(b).is_ok(),
            Content::Symlink(_) => false,
        })
        .collect();
    if json.is_empty() {
        return;
    }
    let k = json[i.index(json.len())];
    let Content::File(bytes) = &mut m.0[k].1 else {
        unreachable!("filtered above");
    };
    let mut doc: Value = serde_json::from_slice(bytes).expect("filtered above");
    f(&mut doc);
    let old = hex_of(bytes);
    *bytes = serde_json::to_vec(&doc).expect("a JSON value serialises");
    changed.push((old, hex_of(bytes), bytes.len() as u64));
}

/// JSON pointers to every value in `doc`, the root (`""`) first.
fn pointers(doc: &Value) -> Vec<String> {
    fn walk(v: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match v {
            Value::Object(o) => {
                for (k, child) in o {
                    let k = k.replace('~', "~0").replace('/', "~1");
                    walk(child, format!("{at}/{k}"), out);
                }
            }
            Value::Array(a) => {
                for (k, child) in a.iter().enumerate() {
                    walk(child, format!("{at}/{k}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(doc, String::new(), &mut out);
    out
}

/// Makes names and references agree with content again after edits: a blob named by its
/// old digest is renamed, and every JSON member's mention of the old digest (descriptors,
/// diff_ids, `<hex>.json` paths) names the new one, with the new size beside it. Those
/// members change in turn, up to the index.
fn rehash(m: &mut Members, mut queue: Changed) {
    for _ in 0..64 {
        let Some((old, new, size)) = queue.pop() else {
            return;
        };
        if old == new {
            continue;
        }
        for (path, content) in &mut m.0 {
            *path = path.replace(&old, &new);
            let Content::File(bytes) = content else {
                continue;
            };
            let Ok(mut doc) = serde_json::from_slice::<Value>(bytes) else {
                continue;
            };
            if !replace_digest(&mut doc, &old, &new, size) {
                continue;
            }
            let before = hex_of(bytes);
            *bytes = serde_json::to_vec(&doc).expect("a JSON value serialises");
            queue.push((before, hex_of(bytes), bytes.len() as u64));
        }
    }
}

/// Replaces `old` by `new` in every string of `v`, and sets `size` beside a `digest` that
/// now names `new`; whether anything changed.
fn replace_digest(v: &mut Value, old: &str, new: &str, size: u64) -> bool {
    match v {
        Value::String(s) if s.contains(old) => {
            *s = s.replace(old, new);
            true
        }
        Value::Array(a) => {
            let mut any = false;
            for child in a {
                any |= replace_digest(child, old, new, size); // every element, no short cut
            }
            any
        }
        Value::Object(o) => {
            let mut any = false;
            for child in o.values_mut() {
                any |= replace_digest(child, old, new, size);
            }
            let names_new = o
                .get("digest")
                .and_then(Value::as_str)
                .is_some_and(|d| d.ends_with(new));
            if any && names_new && o.contains_key("size") {
                o.insert("size".to_owned(), json!(size));
            }
            any
        }
        _ => false,
    }
}

/// Offsets of the headers of a tar, as far as its structure can be followed.
fn headers(tar: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 512 <= tar.len() {
        let block = &tar[off..off + 512];
        if block.iter().all(|b| *b == 0) {
            break;
        }
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(block);
        let Ok(size) = h.entry_size() else {
            break;
        };
        out.push(off);
        let Some(next) = usize::try_from(size)
            .ok()
            .and_then(|s| s.checked_next_multiple_of(512))
            .and_then(|s| (off + 512).checked_add(s))
        else {
            break;
        };
        off = next;
    }
    out
}

fn fix_checksum(block: &mut [u8]) {
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(block);
    h.set_cksum();
    block.copy_from_slice(h.as_bytes());
}

fn damage_bytes(bytes: &mut Vec<u8>, d: &Damage) {
    let hs = headers(bytes);
    let header = |i: &Index| (!hs.is_empty()).then(|| hs[i.index(hs.len())]);
    match d {
        Damage::Flip { at, mask } => {
            if !bytes.is_empty() {
                let at = at.index(bytes.len());
                bytes[at] ^= mask;
            }
        }
        Damage::Header {
            header: i,
            field,
            fix,
        } => {
            let Some(off) = header(i) else { return };
            let block = &mut bytes[off..off + 512];
            let mut put = |at: usize, value: &[u8], width: usize| {
                let field = &mut block[at..at + width];
                field.fill(0);
                let n = value.len().min(width);
                field[..n].copy_from_slice(&value[..n]);
            };
            match field {
                Field::Byte(at, b) => block[at.index(512)] = *b,
                Field::Type(t) => block[156] = *t,
                Field::Name(name) => put(0, name.as_bytes(), 100),
                Field::Link(target) => put(157, target.as_bytes(), 100),
                Field::Magic(magic) => put(257, &magic[..], 8),
                Field::SizeText(text) => put(124, &text[..], 12),
            }
            if *fix {
                fix_checksum(block);
            }
        }
        Damage::Size { header: i, size } => {
            let Some(off) = header(i) else { return };
            let mut h = tar::Header::new_old();
            h.as_mut_bytes().copy_from_slice(&bytes[off..off + 512]);
            let current = h.entry_size().unwrap_or(0);
            let new = match *size {
                SizeTo::Exactly(s) => s,
                SizeTo::Blocks(k) => current.saturating_add_signed(i64::from(k) * 512),
                SizeTo::Bytes(k) => current.saturating_add_signed(i64::from(k)),
            };
            h.set_size(new);
            h.set_cksum();
            bytes[off..off + 512].copy_from_slice(h.as_bytes());
        }
        Damage::ZeroHeader(i) => {
            if let Some(off) = header(i) {
                bytes[off..off + 512].fill(0);
            }
        }
        Damage::Truncate(at) => {
            let at = at.index(bytes.len() + 1);
            bytes.truncate(at);
        }
        Damage::Splice {
            other,
            here,
            there,
            aligned,
        } => {
            let seed = &SEEDS[other.index(SEEDS.len())];
            let other = encode(&seed.members, seed.encoding);
            let align = |k: usize| if *aligned { k / 512 * 512 } else { k };
            let here = align(here.index(bytes.len() + 1));
            let there = align(there.index(other.len() + 1));
            bytes.truncate(here);
            bytes.extend_from_slice(&other[there..]);
        }
        Damage::Append(tail) => bytes.extend_from_slice(tail),
    }
}

// ---- the properties ----

/// Opens `bytes` from a file and from stdin: both must agree, neither panic nor allocate
/// past `ALLOC_CEILING`, and an archive that opens must stream what it announces.
fn check_input(bytes: &[u8]) {
    let (from_file, largest) = largest_allocation(|| open_bytes(bytes));
    assert!(largest <= ALLOC_CEILING, "open allocated {largest} bytes");
    let (from_stdin, largest) = largest_allocation(|| Archive::open_reader_one(bytes, "stdin"));
    assert!(largest <= ALLOC_CEILING, "stdin allocated {largest} bytes");
    match (&from_file, &from_stdin) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.summary().digest, b.summary().digest);
            assert_eq!(a.summary().refs, b.summary().refs);
            assert_eq!(a.summary().format, b.summary().format);
            check_opened(a);
        }
        (Err(f), Err(e)) => {
            // `open_bytes` checked the file's error the same way.
            assert!(!e.to_string().is_empty());
            assert_message_style(e);
            for e in [f, e] {
                if let ArchiveError::TooLarge { file, size, .. } = e {
                    assert_extension_at(bytes, file, *size);
                }
            }
        }
        _ => panic!("a file and stdin read differently: {from_file:?} / {from_stdin:?}"),
    }
}

/// A refused tar extension (`scan::HeaderGuard`) is really there: a header of that kind
/// and size at that byte of the (decompressed) tar, so the guard never lost track of
/// where headers are and refused data as one.
fn assert_extension_at(bytes: &[u8], file: &str, size: u64) {
    let Some(rest) = file.strip_prefix("the tar's ") else {
        return; // a metadata member over the JSON limit
    };
    let (what, at) = rest.rsplit_once(" at byte ").expect("scan's wording");
    let at: usize = at.parse().unwrap();
    let mut tar = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        // Up to where it breaks, if it does: the refusal came before that.
        let gz = flate2::read::MultiGzDecoder::new(bytes);
        let _ = gz.take(at as u64 + 512).read_to_end(&mut tar);
    } else {
        tar = bytes.to_vec();
    }
    let mut h = tar::Header::new_old();
    h.as_mut_bytes().copy_from_slice(&tar[at..at + 512]);
    let kind = h.entry_type();
    match what {
        "GNU sparse map" => assert!(kind.is_gnu_sparse(), "{file}"),
        _ => {
            let want = match what {
                "GNU long-name entry" => tar::EntryType::GNULongName,
                "GNU long-link entry" => tar::EntryType::GNULongLink,
                _ => tar::EntryType::XHeader,
            };
            assert_eq!(kind, want, "{file}");
            assert_eq!(h.entry_size().unwrap(), size, "{file}");
        }
    }
}

/// Every platform of an opened archive streams, whole and cut, as announced.
fn check_opened(a: &Archive) {
    for image in &a.summary().images {
        match a.image_for(&image.platform) {
            Ok(chosen) => {
                check_write(a, chosen, &no_skip());
                check_plan(a, chosen, &no_skip());
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                assert_message_style(&e);
            }
        }
        if image.complete {
            continue;
        }
        // A node that has the missing layers can still be served the rest.
        let layers: HashSet<&str> = image.layers.iter().map(|l| l.digest.as_str()).collect();
        if image.missing.iter().all(|d| layers.contains(d.as_str())) {
            let skip: HashSet<String> = image.missing.iter().cloned().collect();
            check_write(a, image, &skip);
            check_plan(a, image, &skip);
        } else {
            let e = a.oci_len(image, &no_skip()).unwrap_err();
            assert!(matches!(e, ArchiveError::IncompletePlatform { .. }), "{e}");
        }
    }
}

/// The stream a node gets, cut into one part per layer: exactly `plan.len()` bytes, each
/// part a whole OCI-layout tar whose blobs match their digests and whose index.json is the
/// one announced.
fn check_plan(a: &Archive, image: &PlatformImage, skip: &HashSet<String>) {
    let refs = match a.summary().refs.as_slice() {
        [] => vec!["docker.io/library/fuzz:1".to_owned()],
        refs => refs.to_vec(),
    };
    let partial = Some(("sideload.invalid/partial", "r1"));
    let plan = a.stream_plan(image, skip, &refs, partial).unwrap();
    let mut out = Vec::new();
    let n = a.write_plan(&plan, &mut out).unwrap();
    assert_eq!(n, plan.len());
    assert_eq!(out.len() as u64, n);
    let mut rest = &out[..];
    for part in plan.parts() {
        let (tar, tail) = rest.split_at(part.len as usize);
        rest = tail;
        let members = check_tar(tar);
        assert_eq!(hex(&sha256_digest(&members[1].data)), part.index_sha256);
    }
}

fn mixed_case() -> impl Strategy<Value = Case> {
    (member_case(), vec(damage(), 1..3), gzip_flip()).prop_map(|(case, damage, gzip_flip)| Case {
        damage,
        gzip_flip,
        ..case
    })
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn edited_members_never_panic_and_stream_what_they_announce(case in member_case()) {
        check_input(&build(&case));
    }

    #[test]
    fn damaged_bytes_never_panic_and_stream_what_they_announce(case in byte_case()) {
        check_input(&build(&case));
    }

    #[test]
    fn edited_and_damaged_never_panic_and_stream_what_they_announce(case in mixed_case()) {
        check_input(&build(&case));
    }
}

#[test]
fn every_seed_opens_and_streams() {
    for (k, seed) in SEEDS.iter().enumerate() {
        let mut bytes = encode(&seed.members, seed.encoding);
        if seed.encoding == Encoding::Gzip {
            bytes = gzip(&bytes);
        }
        let a = open_bytes(&bytes).unwrap_or_else(|e| panic!("seed {k}: {e}"));
        assert!(!a.summary().images.is_empty(), "seed {k}");
        check_input(&bytes);
    }
}

#[test]
fn rehashed_edits_reach_past_the_digest_checks() {
    // The mutator itself: a config edited and re-hashed is a consistent, openable image.
    let img = TestImage::new(7, "linux/amd64", 1, 1_000);
    let mut m = oci_archive(&[&img], vec![img.descriptor()]);
    let config = format!("blobs/sha256/{}", hex(&img.config_digest()));
    let at = m.0.iter().position(|(p, _)| *p == config).unwrap();
    let Content::File(bytes) = &mut m.0[at].1 else {
        unreachable!()
    };
    let old = hex_of(bytes);
    let mut doc: Value = serde_json::from_slice(bytes).unwrap();
    doc["architecture"] = json!("riscv64");
    *bytes = serde_json::to_vec(&doc).unwrap();
    let change = (old, hex_of(bytes), bytes.len() as u64);
    rehash(&mut m, vec![change]);
    let a = open_ok(&m.tar());
    assert_eq!(a.summary().images[0].platform.architecture, "riscv64");
}

// ---- hand-made hostile cases ----

/// The docker-archive member that holds layer `k`.
fn layer_path(m: &Members, k: usize) -> String {
    m.0.iter()
        .filter(|(p, _)| p.ends_with("/layer.tar"))
        .nth(k)
        .unwrap()
        .0
        .clone()
}

/// Replaces a member by a symlink, keeping manifest.json last (docker writes it last, and
/// a tar cut at an entry boundary would otherwise read as truncation).
fn relink(m: &mut Members, path: &str, target: &str) {
    m.remove(path);
    m.symlink(path, target);
    let manifest = m.get("manifest.json").to_vec();
    m.remove("manifest.json");
    m.file("manifest.json", manifest);
}

#[test]
fn symlink_loops_and_long_chains_are_missing_content() {
    let img = TestImage::new(140, "linux/amd64", 2, 1_000);
    let base = docker_archive(&img, &["app:v2"]);
    let (first, second) = (layer_path(&base, 0), layer_path(&base, 1));

    // To itself, and two layers to each other.
    let mut m = base.clone();
    relink(&mut m, &first, "layer.tar");
    assert!(matches!(
        open_err(&m.tar()),
        ArchiveError::MissingBlobs { .. }
    ));
    let mut m = base.clone();
    relink(&mut m, &first, &relative(&first, &second));
    relink(&mut m, &second, &relative(&second, &first));
    match open_err(&m.tar()) {
        ArchiveError::MissingBlobs { missing, .. } => assert_eq!(missing, [first, second]),
        other => panic!("{other}"),
    }

    // A chain of links: a few hops resolve, more than 8 are given up on.
    for (hops, resolves) in [(3, true), (12, false)] {
        let mut m = base.clone();
        let data = m.get(&layer_path(&m, 0)).to_vec();
        let real = "chain/real.tar".to_owned();
        m.0.insert(0, (real.clone(), Content::File(data)));
        let mut next = real;
        for k in 0..hops {
            let link = format!("chain/hop-{k}");
            m.0.insert(0, (link.clone(), Content::Symlink(relative(&link, &next))));
            next = link;
        }
        let layer = layer_path(&m, 0);
        relink(&mut m, &layer, &relative(&layer, &next));
        let result = open_bytes(&m.tar());
        match (resolves, &result) {
            (true, Ok(a)) => check_opened(a),
            (false, Err(ArchiveError::MissingBlobs { .. })) => {}
            _ => panic!("{hops} hops: {result:?}"),
        }
    }

    // OCI blobs as links: a loop, and out of the tar.
    let oci = oci_archive(&[&img], vec![img.descriptor()]);
    let blob = format!("blobs/sha256/{}", hex(&img.layer_digests()[0]));
    for target in [
        img.layer_digests()[0][7..].to_owned(),
        "../../../etc/passwd".to_owned(),
    ] {
        let mut m = oci.clone();
        m.remove(&blob);
        m.symlink(&blob, &target);
        let e = open_err(&m.tar());
        assert!(matches!(e, ArchiveError::MissingBlobs { .. }), "{e}");
    }
}

#[test]
fn duplicate_members_the_last_regular_file_counts() {
    // As when a tar is extracted: a later copy replaces an earlier one.
    let img = TestImage::new(141, "linux/amd64", 1, 1_000);
    let m = docker_archive(&img, &["app:v2"]);
    let mut dup = m.clone();
    dup.0
        .insert(0, ("manifest.json".into(), Content::File(b"[{".to_vec())));
    let a = open_ok(&dup.tar());
    check_opened(&a);
    let mut dup = m.clone();
    dup.file("manifest.json", "[{");
    assert!(matches!(open_err(&dup.tar()), ArchiveError::Json { .. }));

    // A layer twice: the same bytes are one blob; other bytes are checked like any.
    let layer = layer_path(&m, 0);
    let mut dup = m.clone();
    dup.0
        .insert(0, (layer.clone(), Content::File(m.get(&layer).to_vec())));
    let a = open_ok(&dup.tar());
    assert_eq!(a.summary().images[0].layers.len(), 1);
    check_opened(&a);
    let mut bad = m.get(&layer).to_vec();
    bad[700] ^= 1;
    let mut dup = m.clone();
    let good = dup.0.iter().position(|(p, _)| *p == layer).unwrap();
    dup.0.insert(good + 1, (layer.clone(), Content::File(bad)));
    assert!(matches!(
        open_err(&dup.tar()),
        ArchiveError::DigestMismatch { .. }
    ));

    // A regular file wins over a link of the same name, wherever the link is.
    let mut dup = m.clone();
    dup.0
        .insert(0, (layer.clone(), Content::Symlink("/etc/passwd".into())));
    check_opened(&open_ok(&dup.tar()));
}

#[test]
fn manifest_json_pointing_outside_the_tar() {
    let img = TestImage::new(142, "linux/amd64", 1, 1_000);
    let m = docker_archive(&img, &["app:v2"]);
    let edited = |f: &dyn Fn(&mut Value)| {
        let mut m = m.clone();
        let mut list: Value = serde_json::from_slice(m.get("manifest.json")).unwrap();
        f(&mut list[0]);
        m.replace("manifest.json", serde_json::to_vec(&list).unwrap());
        m.tar()
    };
    for outside in [
        "../config.json",
        "/etc/passwd",
        "a/../../b",
        "../../../../etc/shadow",
    ] {
        let e = open_err(&edited(&|e| e["Config"] = json!(outside)));
        match &e {
            ArchiveError::MissingBlobs { missing, .. } => {
                assert_eq!(missing, &[clean(outside)], "{e}")
            }
            other => panic!("{outside}: {other}"),
        }
        let e = open_err(&edited(&|e| e["Layers"] = json!([outside])));
        assert!(matches!(e, ArchiveError::MissingBlobs { .. }), "{e}");
    }
    // A path that only looks odd but names a member is that member (Go's path.Clean).
    let config = format!("{}.json", hex(&img.config_digest()));
    check_opened(&open_ok(&edited(&|e| {
        e["Config"] = json!(format!("/x/../{config}"))
    })));
    // Config naming the manifest, or a directory: refused, not followed.
    for odd in ["manifest.json", "", ".", "repositories"] {
        let result = open_bytes(&edited(&|e| e["Config"] = json!(odd)));
        assert!(result.is_err(), "{odd}: {result:?}");
    }
    // index.json naming blobs that are not there, or not under blobs/.
    let oci = oci_archive(&[&img], vec![img.descriptor()]);
    let mut d = img.descriptor();
    d["digest"] = json!(format!("sha256:{}", "0".repeat(64)));
    let mut m = oci.clone();
    m.replace(
        "index.json",
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [d]})).unwrap(),
    );
    assert!(matches!(
        open_err(&m.tar()),
        ArchiveError::MissingBlobs { .. }
    ));
}

#[test]
fn multi_gigabyte_metadata_fails_fast_without_allocating() {
    // A header declaring gigabytes of index.json or manifest.json, data short or absent,
    // from a file (its length is known: refused before reading), gzip'd and from stdin (read
    // to the end, which is near). Never with an allocation of the declared size.
    let img = TestImage::new(143, "linux/amd64", 2, 2_000);
    let fixtures = [
        (docker_archive(&img, &["app:v2"]), "manifest.json"),
        (oci_archive(&[&img], vec![img.descriptor()]), "index.json"),
        (docker25_archive(&img, "app:v2", "v2"), "index.json"),
        (docker25_archive(&img, "app:v2", "v2"), "manifest.json"),
    ];
    for (m, member) in &fixtures {
        let tar = m.tar();
        let start = data_offset(&tar, member);
        for declared in [4 << 30, 1 << 40, u64::MAX >> 2] {
            for short in [None, Some(100), Some(0)] {
                let mut bytes = tar.clone();
                patch_size(&mut bytes, member, declared);
                if let Some(kept) = short {
                    bytes.truncate(start + kept);
                }
                let inputs: [(&str, Vec<u8>); 2] =
                    [("plain", bytes.clone()), ("gzip", gzip(&bytes))];
                for (how, input) in inputs {
                    let started = Instant::now();
                    let ((file, stdin), largest) = largest_allocation(|| {
                        (
                            open_bytes(&input),
                            Archive::open_reader_one(&input[..], "stdin"),
                        )
                    });
                    let took = started.elapsed();
                    let what = format!("{member} of {declared} bytes, {how}, kept {short:?}");
                    for result in [file, stdin] {
                        let e = result.err().unwrap_or_else(|| panic!("{what}: opened"));
                        assert!(matches!(e, ArchiveError::Truncated { .. }), "{what}: {e}");
                        assert!(e.to_string().contains("truncated"), "{e}");
                    }
                    assert!(
                        largest < 2 * CHUNK + (64 << 10),
                        "{what}: allocated {largest}"
                    );
                    assert!(took < Duration::from_secs(1), "{what}: took {took:?}");
                }
            }
        }
    }
    // Just under containerd's limit, the bytes are reserved, up to that limit and no more.
    let (m, member) = &fixtures[1];
    let mut bytes = m.tar();
    patch_size(&mut bytes, member, JSON_LIMIT);
    let (e, largest) = largest_allocation(|| Archive::open_reader_one(&bytes[..], "stdin").err());
    assert!(matches!(e, Some(ArchiveError::Truncated { .. })), "{e:?}");
    assert!(largest <= ALLOC_CEILING, "allocated {largest}");
}

#[test]
fn odd_but_consistent_manifests_stream_as_announced() {
    // Reached by chains of edits only rarely: a manifest of no layers written
    // `"layers": null` (as Docker 25.0.0 did), and one whose layer is its config blob.
    let mut img = TestImage::new(150, "linux/amd64", 0, 1_000);
    let mut manifest: Value = serde_json::from_slice(&img.manifest).unwrap();
    manifest["layers"] = Value::Null;
    img.manifest = serde_json::to_vec(&manifest).unwrap();
    check_input(&oci_archive(&[&img], vec![img.descriptor()]).tar());

    let mut img = TestImage::new(151, "linux/amd64", 1, 1_000);
    let mut config: Value = serde_json::from_slice(&img.config).unwrap();
    config["rootfs"]["diff_ids"] = json!([sha256_digest(b"x")]);
    img.config = serde_json::to_vec(&config).unwrap();
    let mut manifest: Value =
        serde_json::from_slice(&oci_manifest(&img.config, &[], false)).unwrap();
    manifest["layers"] = json!([manifest["config"].clone()]);
    img.manifest = serde_json::to_vec(&manifest).unwrap();
    let bytes = oci_archive(&[&img], vec![img.descriptor()]).tar();
    check_opened(&open_ok(&bytes));
    check_input(&bytes);

    // Indexes nested past the limit are refused, not followed.
    let amd = TestImage::new(152, "linux/amd64", 1, 1_000);
    let mut m = oci_archive(&[&amd], vec![]);
    let mut inner = image_index(&[&amd]);
    for _ in 0..6 {
        m.file(&blob_path(&inner), inner.clone());
        inner = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": spec::OCI_INDEX,
            "manifests": [{
                "mediaType": spec::OCI_INDEX,
                "digest": sha256_digest(&inner),
                "size": inner.len(),
            }],
        }))
        .unwrap();
    }
    m.file(&blob_path(&inner), inner.clone());
    let entry = json!({
        "mediaType": spec::OCI_INDEX,
        "digest": sha256_digest(&inner),
        "size": inner.len(),
    });
    m.replace(
        "index.json",
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entry]})).unwrap(),
    );
    let e = open_err(&m.tar());
    assert!(matches!(e, ArchiveError::Corrupt { .. }), "{e}");
}
