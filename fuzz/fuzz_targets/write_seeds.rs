//! Writes the seed inputs of every target (`tutti::fuzzing::seeds`) under the directory given
//! as the first argument: `DIR/<target>/seed-<n>`.
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "seeds".into()));
    for (n, (target, bytes)) in tutti::fuzzing::seeds().into_iter().enumerate() {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("seed-{n}")), bytes)?;
    }
    Ok(())
}
