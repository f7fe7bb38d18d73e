//! Storacha (IPFS + Filecoin) as a destination. So far: objects packed as
//! CAR files with the root CIDs Storacha's own tools compute (`car`). The
//! upload bridge and gateway reads are not written yet (issue 7).

pub mod car;
