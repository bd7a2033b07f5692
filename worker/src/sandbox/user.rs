//! `USER` resolution against the root filesystem's `/etc/passwd` and
//! `/etc/group`, with Docker's rules.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UserError {
    #[error("user {0:?} not found in /etc/passwd")]
    NoUser(String),
    #[error("group {0:?} not found in /etc/group")]
    NoGroup(String),
}

/// Who a step runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: those of `/etc/group` that list the user.
    pub groups: Vec<u32>,
    pub home: String,
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        Some(Passwd {
            name: f.first()?,
            uid: f.get(2)?.parse().ok()?,
            gid: f.get(3)?.parse().ok()?,
            home: f.get(5).copied().unwrap_or("/"),
        })
    })
}

/// (name, gid, members) of each `/etc/group` line.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((*f.first()?, f.get(2)?.parse().ok()?, members))
    })
}

/// Resolves `spec` (`""`, `name`, `uid`, `name:group`, `uid:gid`, …) given
/// the files' contents (empty when a file is missing).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let (user, group_spec) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let (uid, entry) = match user.parse::<u32>() {
        Ok(uid) => (uid, passwd_entries(passwd).find(|p| p.uid == uid)),
        Err(_) => {
            let p = passwd_entries(passwd)
                .find(|p| p.name == user)
                .ok_or_else(|| UserError::NoUser(user.to_owned()))?;
            (p.uid, Some(p))
        }
    };
    let gid = match group_spec {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| UserError::NoGroup(g.to_owned()))?,
        },
        None => entry.as_ref().map_or(0, |p| p.gid),
    };
    let groups = match &entry {
        Some(p) => group_entries(group)
            .filter(|(_, g, m)| m.contains(&p.name) && *g != gid)
            .map(|(_, g, _)| g)
            .collect(),
        None => Vec::new(),
    };
    let home = entry.as_ref().map_or_else(
        || {
            if uid == 0 {
                "/root".to_owned()
            } else {
                "/".to_owned()
            }
        },
        |p| p.home.to_owned(),
    );
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:app,other\nstaff:x:50:app\n";

    #[test]
    fn forms() {
        assert_eq!(
            resolve("", PASSWD, GROUP).unwrap(),
            Identity {
                uid: 0,
                gid: 0,
                groups: vec![],
                home: "/root".into()
            }
        );
        assert_eq!(
            resolve("app", PASSWD, GROUP).unwrap(),
            Identity {
                uid: 1000,
                gid: 1000,
                groups: vec![10, 50],
                home: "/home/app".into()
            }
        );
        assert_eq!(resolve("1000:wheel", PASSWD, GROUP).unwrap().gid, 10);
        assert_eq!(resolve("app:7", PASSWD, GROUP).unwrap().gid, 7);
        let unknown = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!(
            (unknown.uid, unknown.gid, unknown.home.as_str()),
            (4242, 0, "/")
        );
        assert_eq!(resolve("4242:4343", "", "").unwrap().gid, 4343);
    }

    #[test]
    fn errors() {
        assert_eq!(
            resolve("ghost", PASSWD, GROUP).unwrap_err().to_string(),
            "user \"ghost\" not found in /etc/passwd"
        );
        assert_eq!(
            resolve("app:ghosts", PASSWD, GROUP)
                .unwrap_err()
                .to_string(),
            "group \"ghosts\" not found in /etc/group"
        );
        assert!(
            resolve("app", "", "").is_err(),
            "no passwd file: names cannot resolve"
        );
    }
}
