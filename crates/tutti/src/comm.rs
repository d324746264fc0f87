//! TODO
pub struct Communicator;
pub struct Config;
pub struct SendRequest;
pub struct RecvRequest;
