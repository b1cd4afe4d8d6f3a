//! Docker's `-u` resolved against the container's own /etc/passwd and
//! /etc/group (like runc's libcontainer/user), read inside the rootfs (see
//! `confined`).

use std::path::Path;

use crate::runc::RuntimeError;

/// Docker refuses ids outside this range.
const MAX_ID: u64 = i32::MAX as u64;

/// The ids the container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Groups from /etc/group that list the user as a member (only when the
    /// group was not given explicitly, as in Docker).
    pub additional_gids: Vec<u32>,
    /// Home from /etc/passwd, "/" if unknown.
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// The most of /etc/passwd or /etc/group read (runc reads any size).
const MAX_DB: u64 = 4 << 20;

/// Reads a file of the container; a missing file reads as empty (as runc
/// does). Only a regular file inside the rootfs, at most [`MAX_DB`] bytes: a
/// FIFO or device planted there is refused, never opened.
fn read_in_root(root: &Path, path: &str) -> Result<String, RuntimeError> {
    match crate::confined::read_file_in_root(root, path, MAX_DB) {
        Ok(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Ok(None) => Ok(String::new()),
        Err(crate::confined::ConfinedError::Io(what, e)) => Err(RuntimeError::io(what, e)),
        Err(e) => Err(RuntimeError::Invalid(format!(
            "unable to read the user database: {e}"
        ))),
    }
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.trim().parse().ok()?,
                gid: f.get(3)?.trim().parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// A numeric id in Docker's range, None if `s` is not a number at all.
fn parse_id(s: &str) -> Result<Option<u32>, RuntimeError> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_digit()) {
        return Ok(None);
    }
    match s.parse::<u64>() {
        Ok(n) if n <= MAX_ID => Ok(Some(n as u32)),
        _ => Err(RuntimeError::Invalid(
            "uids and gids must be in range 0-2147483647".into(),
        )),
    }
}

/// Resolves Docker's `-u` value (`name`, `uid`, `name:group`, `uid:gid`, empty
/// for root) against `<rootfs>/etc/passwd` and `<rootfs>/etc/group`, with
/// `--group-add`'s groups beside the user's own.
pub fn resolve_user(
    rootfs: &Path,
    spec: &str,
    group_add: &[String],
) -> Result<ExecUser, RuntimeError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let passwd = parse_passwd(&read_in_root(rootfs, "/etc/passwd")?);
    let uid_num = parse_id(user)?;
    let entry = passwd.iter().find(|e| match uid_num {
        Some(n) => e.uid == n,
        None => e.name == user,
    });
    let (uid, mut gid, name, home) = match (entry, uid_num) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name.clone()), e.home.clone()),
        // A numeric uid need not be in passwd: it runs with gid 0.
        (None, Some(n)) => (n, 0, None, "/".to_string()),
        (None, None) => {
            return Err(RuntimeError::Invalid(format!(
                "unable to find user {user}: no matching entries in passwd file"
            )));
        }
    };
    let groups = parse_group(&read_in_root(rootfs, "/etc/group")?);
    let mut additional_gids = Vec::new();
    match group {
        Some(g) if !g.is_empty() => {
            gid = group_id(&groups, g)?;
        }
        _ => {
            if let Some(n) = &name {
                for e in groups.iter().filter(|e| e.members.iter().any(|m| m == n)) {
                    if !additional_gids.contains(&e.gid) {
                        additional_gids.push(e.gid);
                    }
                }
            }
        }
    }
    for g in group_add {
        let gid = group_id(&groups, g)?;
        if !additional_gids.contains(&gid) {
            additional_gids.push(gid);
        }
    }
    Ok(ExecUser {
        uid,
        gid,
        additional_gids,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

/// A group's id: a number as it is, a name from `groups`.
fn group_id(groups: &[GroupEntry], g: &str) -> Result<u32, RuntimeError> {
    match parse_id(g)? {
        Some(n) => Ok(n),
        None => groups
            .iter()
            .find(|e| e.name == g)
            .map(|e| e.gid)
            .ok_or_else(|| {
                RuntimeError::Invalid(format!(
                    "unable to find group {g}: no matching entries in group file"
                ))
            }),
    }
}

/// The owner of a `COPY --chown=user[:group]`: names from the image's
/// `/etc/passwd` and `/etc/group`, numbers as they are; without a group the
/// gid is the uid's number, as Docker does.
pub fn resolve_owner(rootfs: &Path, spec: &str) -> Result<(u32, u32), RuntimeError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let uid = match parse_id(user)? {
        Some(n) => n,
        None => parse_passwd(&read_in_root(rootfs, "/etc/passwd")?)
            .iter()
            .find(|e| e.name == user)
            .map(|e| e.uid)
            .ok_or_else(|| {
                RuntimeError::Invalid(format!(
                    "unable to find user {user}: no matching entries in passwd file"
                ))
            })?,
    };
    let gid = match group.filter(|g| !g.is_empty()) {
        None => uid,
        Some(g) if parse_id(g)?.is_some() => group_id(&[], g)?,
        Some(g) => group_id(&parse_group(&read_in_root(rootfs, "/etc/group")?), g)?,
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("etc")).expect("etc");
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nweb:x:1000:1000::/home/web:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nwheel:x:10:root,web\nstaff:x:50:web\nnogroup:x:65534:\nweb:x:1000:\n",
        )
        .expect("group");
        d
    }

    #[test]
    fn copy_owners() {
        let d = rootfs();
        assert_eq!(resolve_owner(d.path(), "web").unwrap(), (1000, 1000));
        assert_eq!(resolve_owner(d.path(), "web:staff").unwrap(), (1000, 50));
        assert_eq!(resolve_owner(d.path(), "42").unwrap(), (42, 42));
        assert_eq!(resolve_owner(d.path(), "42:7").unwrap(), (42, 7));
        let e = resolve_owner(d.path(), "ghost").unwrap_err().to_string();
        assert!(e.contains("unable to find user ghost"), "{e}");
    }

    #[test]
    fn names_and_ids() {
        let d = rootfs();
        let r = resolve_user(d.path(), "", &[]).expect("root");
        assert_eq!((r.uid, r.gid, r.additional_gids.clone()), (0, 0, vec![10]));
        assert_eq!(r.home, "/root");
        let w = resolve_user(d.path(), "web", &[]).expect("web");
        assert_eq!(
            (w.uid, w.gid, w.additional_gids),
            (1000, 1000, vec![10, 50])
        );
        let n = resolve_user(d.path(), "nobody:staff", &[]).expect("nobody:staff");
        assert_eq!((n.uid, n.gid, n.additional_gids), (65534, 50, vec![]));
        let u = resolve_user(d.path(), "1000:5", &[]).expect("1000:5");
        assert_eq!((u.uid, u.gid), (1000, 5));
        let unknown = resolve_user(d.path(), "4242", &[]).expect("numeric not in passwd");
        assert_eq!(
            (unknown.uid, unknown.gid, unknown.home.as_str()),
            (4242, 0, "/")
        );
    }

    #[test]
    fn added_groups_join_the_users_own() {
        let d = rootfs();
        let n = resolve_user(d.path(), "nobody:staff", &["wheel".into(), "777".into()])
            .expect("nobody:staff");
        assert_eq!((n.gid, n.additional_gids), (50, vec![10, 777]));
        let w = resolve_user(d.path(), "web", &["staff".into()]).expect("web");
        assert_eq!(w.additional_gids, vec![10, 50]);
        assert_eq!(
            resolve_user(d.path(), "web", &["ghosts".into()])
                .expect_err("no group")
                .to_string(),
            "unable to find group ghosts: no matching entries in group file"
        );
    }

    #[test]
    fn docker_errors() {
        let d = rootfs();
        assert_eq!(
            resolve_user(d.path(), "xyz", &[])
                .expect_err("no user")
                .to_string(),
            "unable to find user xyz: no matching entries in passwd file"
        );
        assert_eq!(
            resolve_user(d.path(), "web:nope", &[])
                .expect_err("no group")
                .to_string(),
            "unable to find group nope: no matching entries in group file"
        );
        assert!(resolve_user(d.path(), "99999999999", &[]).is_err());
        let empty = tempfile::tempdir().expect("tempdir");
        assert_eq!(resolve_user(empty.path(), "", &[]).expect("root").uid, 0);
        assert!(resolve_user(empty.path(), "web", &[]).is_err());
    }

    #[test]
    fn symlinks_stay_inside_the_rootfs() {
        let host = tempfile::tempdir().expect("tempdir");
        // A passwd file outside the rootfs that must never be read.
        std::fs::write(host.path().join("evil"), "evil:x:0:0::/:/bin/sh\n").expect("evil");
        let root = host.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        std::fs::create_dir_all(root.join("real")).expect("real");
        std::fs::write(root.join("real/passwd"), "inside:x:7:7::/:/bin/sh\n").expect("passwd");
        std::os::unix::fs::symlink("../../../evil", root.join("etc/passwd")).expect("link");
        assert!(resolve_user(&root, "evil", &[]).is_err());
        std::fs::remove_file(root.join("etc/passwd")).expect("rm");
        std::os::unix::fs::symlink("/real/passwd", root.join("etc/passwd")).expect("link");
        assert_eq!(resolve_user(&root, "inside", &[]).expect("inside").uid, 7);
    }
}
