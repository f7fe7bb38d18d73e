//! The OS user a server pitr starts runs as: PostgreSQL refuses to run as
//! root, so a root pitr hands the data directory and the process to an
//! unprivileged user.

/// The OS user named for PostgreSQL does not exist.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "pitr runs as root and PostgreSQL refuses to, so PostgreSQL runs as the OS user {name:?}, \
     which does not exist: create it or name another ({setting})"
)]
pub struct NoOsUser {
    /// The user asked for.
    pub name: String,
    /// Where the name comes from, for the fix (`--os-user`, `[verify] os_user`).
    pub setting: &'static str,
}

/// `(uid, gid)` of `name` when pitr runs as root (PostgreSQL must run as
/// someone else), `None` when pitr is unprivileged (PostgreSQL runs as pitr's
/// own user). `setting` says where the name was given.
pub fn server_owner(name: &str, setting: &'static str) -> Result<Option<(u32, u32)>, NoOsUser> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(Some((u.uid.as_raw(), u.gid.as_raw()))),
        _ => Err(NoOsUser {
            name: name.to_owned(),
            setting,
        }),
    }
}
