//! Fuzz target: `tutti::fuzzing::mesh_hello` (see that module for what it checks).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        tutti::fuzzing::mesh_hello(data);
    });
}
