//! Fuzz target: `tutti::fuzzing::store_message` (see that module for what it checks).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        tutti::fuzzing::store_message(data);
    });
}
