//! What the agent's unit tests share.

/// A ustar archive of `entries` (path, contents), each mode 0644.
pub fn tar_of<P: AsRef<str>>(entries: &[(P, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path.as_ref(), *data).unwrap();
    }
    b.into_inner().unwrap()
}
