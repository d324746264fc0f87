//! Fuzz target: `tutti::fuzzing::frame_header` (see that module for what it checks).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        tutti::fuzzing::frame_header(data);
    });
}
