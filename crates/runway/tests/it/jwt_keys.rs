//! Test keys for the JWT route test, shared with the gateway's unit tests
//! (`crates/gateway/testdata`): RSA 2048 pairs generated once with `openssl genpkey`, and the
//! modulus of each (base64url) for the JWKS the test serves.

pub const RSA1_PEM: &str = include_str!("../../../gateway/testdata/rsa1.pem");
pub const RSA1_N: &str = include_str!("../../../gateway/testdata/rsa1.n");
pub const RSA2_PEM: &str = include_str!("../../../gateway/testdata/rsa2.pem");
pub const RSA2_N: &str = include_str!("../../../gateway/testdata/rsa2.n");
