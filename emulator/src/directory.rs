//! The tenant's objects: users (with lookup indexes), Microsoft 365 and other groups,
//! contacts, and the photos stored for each of them.
//!
//! Invariants: users keep insertion order (so `$top=1` is stable); the UPN, mail and
//! employeeId indexes always agree with the user table; a photo is keyed by its canonical
//! target string (`user:<id>`, …) with ids as stored, so every way of naming a target
//! reaches the same photo.

use std::collections::HashMap;

use bytes::Bytes;
use indexmap::IndexMap;

use crate::config::{Photo, User};

/// A target as named in a request path, before resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TargetRef {
    User(String),
    Group(String),
    Contact {
        owner: String,
        folder: Option<String>,
        id: String,
    },
}

/// A target after resolution against the directory.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    /// Canonical target string; for unknown targets built from the names as given.
    pub canonical: String,
    /// `user:<upn>` for user targets, for fault rules that name users by UPN.
    pub alias: Option<String>,
    pub usable: Result<(), UnusableKind>,
    pub is_contact: bool,
}

/// Why a target cannot take a photo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnusableKind {
    /// Unknown user, group, contact owner or contact.
    NotFound,
    /// The user (or contact owner) has no Exchange Online mailbox.
    NoMailbox,
    /// A group that is not a Microsoft 365 group.
    NotUnified,
}

#[derive(Clone, Debug)]
struct Group {
    id: String,
    unified: bool,
}

#[derive(Default)]
pub(crate) struct Directory {
    /// Lowercased id → user, in insertion order.
    users: IndexMap<String, User>,
    /// Lowercased UPN → lowercased id.
    by_upn: HashMap<String, String>,
    /// Lowercased mail → lowercased ids.
    by_mail: HashMap<String, Vec<String>>,
    /// employeeId (exact) → lowercased ids.
    by_employee_id: HashMap<String, Vec<String>>,
    /// Lowercased id → group.
    groups: HashMap<String, Group>,
    /// (lowercased owner id, folder, contact id) → canonical target. Exchange ids are
    /// case-sensitive, so folder and contact ids are kept as given.
    contacts: HashMap<(String, Option<String>, String), String>,
    photos: HashMap<String, Photo>,
    counter: u64,
}

impl Directory {
    pub fn add_user(&mut self, user: User) {
        let key = user.id.to_lowercase();
        self.remove_user_key(&key);
        if let Some(old) = self.by_upn.get(&user.upn.to_lowercase()).cloned() {
            self.remove_user_key(&old);
        }
        self.by_upn.insert(user.upn.to_lowercase(), key.clone());
        if let Some(mail) = &user.mail {
            self.by_mail
                .entry(mail.to_lowercase())
                .or_default()
                .push(key.clone());
        }
        if let Some(e) = &user.employee_id {
            self.by_employee_id
                .entry(e.clone())
                .or_default()
                .push(key.clone());
        }
        self.users.insert(key, user);
    }

    pub fn remove_user(&mut self, id_or_upn: &str) {
        if let Some(key) = self.user_key(id_or_upn) {
            self.remove_user_key(&key);
        }
    }

    fn remove_user_key(&mut self, key: &str) {
        let Some(user) = self.users.shift_remove(key) else {
            return;
        };
        self.by_upn.remove(&user.upn.to_lowercase());
        if let Some(mail) = &user.mail {
            remove_from(&mut self.by_mail, &mail.to_lowercase(), key);
        }
        if let Some(e) = &user.employee_id {
            remove_from(&mut self.by_employee_id, e, key);
        }
        self.photos.remove(&format!("user:{}", user.id));
    }

    fn user_key(&self, id_or_upn: &str) -> Option<String> {
        let lower = id_or_upn.to_lowercase();
        if self.users.contains_key(&lower) {
            return Some(lower);
        }
        self.by_upn.get(&lower).cloned()
    }

    pub fn user(&self, id_or_upn: &str) -> Option<&User> {
        let lower = id_or_upn.to_lowercase();
        self.users
            .get(&lower)
            .or_else(|| self.by_upn.get(&lower).and_then(|k| self.users.get(k)))
    }

    pub fn add_group(&mut self, id: &str, unified: bool) {
        self.groups.insert(
            id.to_lowercase(),
            Group {
                id: id.to_owned(),
                unified,
            },
        );
    }

    /// Adds a contact; returns false when the owner is unknown.
    pub fn add_contact(&mut self, owner: &str, folder: Option<&str>, id: &str) -> bool {
        let Some(user) = self.user(owner) else {
            return false;
        };
        let canonical = contact_canonical(&user.id, folder, id);
        let key = (
            user.id.to_lowercase(),
            folder.map(str::to_owned),
            id.to_owned(),
        );
        self.contacts.insert(key, canonical);
        true
    }

    /// Resolves a path target. With `create`, unknown targets are created first (the
    /// `accept_any_target` behaviour for uploads); `default_domain` completes UPNs of users
    /// created from a bare id.
    pub fn resolve(&mut self, target: &TargetRef, create: bool, default_domain: &str) -> Resolved {
        match target {
            TargetRef::User(name) => {
                if create && self.user(name).is_none() {
                    self.add_user(auto_user(name, default_domain));
                }
                match self.user(name) {
                    Some(u) => Resolved {
                        canonical: format!("user:{}", u.id),
                        alias: Some(format!("user:{}", u.upn)),
                        usable: if u.has_mailbox {
                            Ok(())
                        } else {
                            Err(UnusableKind::NoMailbox)
                        },
                        is_contact: false,
                    },
                    None => Resolved {
                        canonical: format!("user:{name}"),
                        alias: None,
                        usable: Err(UnusableKind::NotFound),
                        is_contact: false,
                    },
                }
            }
            TargetRef::Group(id) => {
                let lower = id.to_lowercase();
                if create && !self.groups.contains_key(&lower) {
                    self.add_group(id, true);
                }
                match self.groups.get(&lower) {
                    Some(g) => Resolved {
                        canonical: format!("group:{}", g.id),
                        alias: None,
                        usable: if g.unified {
                            Ok(())
                        } else {
                            Err(UnusableKind::NotUnified)
                        },
                        is_contact: false,
                    },
                    None => Resolved {
                        canonical: format!("group:{id}"),
                        alias: None,
                        usable: Err(UnusableKind::NotFound),
                        is_contact: false,
                    },
                }
            }
            TargetRef::Contact { owner, folder, id } => {
                if create {
                    if self.user(owner).is_none() {
                        self.add_user(auto_user(owner, default_domain));
                    }
                    let known = self.user(owner).is_some_and(|u| {
                        self.contacts.contains_key(&(
                            u.id.to_lowercase(),
                            folder.clone(),
                            id.clone(),
                        ))
                    });
                    if !known {
                        self.add_contact(owner, folder.as_deref(), id);
                    }
                }
                let Some(user) = self.user(owner) else {
                    return Resolved {
                        canonical: contact_canonical(owner, folder.as_deref(), id),
                        alias: None,
                        usable: Err(UnusableKind::NotFound),
                        is_contact: true,
                    };
                };
                let key = (user.id.to_lowercase(), folder.clone(), id.clone());
                let has_mailbox = user.has_mailbox;
                let fallback = contact_canonical(&user.id, folder.as_deref(), id);
                match self.contacts.get(&key) {
                    Some(c) => Resolved {
                        canonical: c.clone(),
                        alias: None,
                        usable: if has_mailbox {
                            Ok(())
                        } else {
                            Err(UnusableKind::NoMailbox)
                        },
                        is_contact: true,
                    },
                    None => Resolved {
                        canonical: fallback,
                        alias: None,
                        usable: Err(if has_mailbox {
                            UnusableKind::NotFound
                        } else {
                            UnusableKind::NoMailbox
                        }),
                        is_contact: true,
                    },
                }
            }
        }
    }

    pub fn photo(&self, canonical: &str) -> Option<&Photo> {
        self.photos.get(canonical)
    }

    /// Stores a photo under a canonical target with a fresh etag.
    pub fn store_photo(
        &mut self,
        canonical: &str,
        bytes: Bytes,
        content_type: &str,
        keep_bytes: bool,
    ) -> &Photo {
        self.counter += 1;
        let hash = blake3::hash(&bytes);
        let mut etag_hasher = blake3::Hasher::new();
        etag_hasher.update(hash.as_bytes());
        etag_hasher.update(&self.counter.to_le_bytes());
        let etag_hex = etag_hasher.finalize().to_hex();
        let (width, height) = image_size(&bytes).unwrap_or((648, 648));
        let photo = Photo {
            len: bytes.len(),
            bytes: if keep_bytes { bytes } else { Bytes::new() },
            blake3: hash.to_hex().to_string(),
            content_type: content_type.to_owned(),
            etag: format!("W/\"{}\"", &etag_hex[..32]),
            updated: self.counter,
            width,
            height,
        };
        self.photos.insert(canonical.to_owned(), photo);
        // The entry was inserted just above.
        &self.photos[canonical]
    }

    pub fn remove_photo(&mut self, canonical: &str) -> bool {
        self.photos.remove(canonical).is_some()
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// Position of a user in insertion order, for sorting index lookups.
    pub fn position(&self, key: &str) -> Option<(usize, &User)> {
        self.users.get_full(key).map(|(i, _, u)| (i, u))
    }

    pub fn keys_by_upn(&self, upn: &str) -> Vec<String> {
        self.by_upn
            .get(&upn.to_lowercase())
            .cloned()
            .into_iter()
            .collect()
    }

    pub fn keys_by_id(&self, id: &str) -> Vec<String> {
        let lower = id.to_lowercase();
        if self.users.contains_key(&lower) {
            vec![lower]
        } else {
            Vec::new()
        }
    }

    pub fn keys_by_mail(&self, mail: &str) -> Vec<String> {
        self.by_mail
            .get(&mail.to_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    pub fn keys_by_employee_id(&self, e: &str) -> Vec<String> {
        self.by_employee_id.get(e).cloned().unwrap_or_default()
    }
}

fn remove_from(index: &mut HashMap<String, Vec<String>>, value: &str, key: &str) {
    if let Some(keys) = index.get_mut(value) {
        keys.retain(|k| k != key);
        if keys.is_empty() {
            index.remove(value);
        }
    }
}

pub(crate) fn contact_canonical(owner: &str, folder: Option<&str>, id: &str) -> String {
    match folder {
        Some(f) => format!("contact:{owner}/{f}/{id}"),
        None => format!("contact:{owner}/{id}"),
    }
}

/// A user created by `accept_any_target`. Named by UPN, it gets an id derived from the UPN
/// (stable across runs); named by id, a UPN in the tenant's domain.
fn auto_user(name: &str, default_domain: &str) -> User {
    if name.contains('@') {
        let digest = sha1_bytes(name.to_lowercase().as_bytes());
        let id = uuid::Builder::from_sha1_bytes(digest)
            .into_uuid()
            .to_string();
        User::new(id, name).with_mail(name)
    } else {
        User::new(name, format!("{name}@{default_domain}"))
    }
}

fn sha1_bytes(data: &[u8]) -> [u8; 16] {
    use sha1::{Digest, Sha1};
    let full = Sha1::digest(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// Width and height from a JPEG SOFn or PNG IHDR header, without decoding the image.
pub(crate) fn image_size(data: &[u8]) -> Option<(u32, u32)> {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        let w = u32::from_be_bytes(data.get(16..20)?.try_into().ok()?);
        let h = u32::from_be_bytes(data.get(20..24)?.try_into().ok()?);
        return Some((w, h));
    }
    if !data.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    while i + 4 <= data.len() {
        if data[i] != 0xFF {
            return None;
        }
        let marker = data[i + 1];
        if marker == 0xFF {
            // Fill bytes may pad markers.
            i += 1;
            continue;
        }
        if (0xD0..=0xD9).contains(&marker) || marker == 0x01 {
            i += 2;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([data[i + 2], data[i + 3]]));
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let seg = data.get(i + 4..i + 9)?;
            let h = u32::from(u16::from_be_bytes([seg[1], seg[2]]));
            let w = u32::from(u16::from_be_bytes([seg[3], seg[4]]));
            return Some((w, h));
        }
        i += 2 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_and_png_sizes() {
        // SOI, APP0 (len 4: 2 bytes payload), SOF0 with height 300, width 200.
        let jpeg = [
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x01,
            0x2C, 0x00, 0xC8, 0x03,
        ];
        assert_eq!(image_size(&jpeg), Some((200, 300)));
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&640u32.to_be_bytes());
        png.extend_from_slice(&480u32.to_be_bytes());
        assert_eq!(image_size(&png), Some((640, 480)));
        assert_eq!(image_size(b"GIF89a"), None);
    }

    #[test]
    fn users_resolve_by_id_and_upn_case_insensitively() {
        let mut d = Directory::default();
        d.add_user(User::new("AAA-1", "Jane@Contoso.com").with_mail("jane@contoso.com"));
        let r = d.resolve(&TargetRef::User("jane@CONTOSO.com".into()), false, "x");
        assert_eq!(r.canonical, "user:AAA-1");
        assert!(r.usable.is_ok());
        assert_eq!(d.keys_by_mail("JANE@contoso.com"), vec!["aaa-1".to_owned()]);
        d.remove_user("jane@contoso.com");
        assert!(d.user("AAA-1").is_none());
        assert!(d.keys_by_mail("jane@contoso.com").is_empty());
    }

    #[test]
    fn auto_created_users_get_stable_ids() {
        let mut a = Directory::default();
        let mut b = Directory::default();
        let t = TargetRef::User("new@contoso.com".into());
        assert_eq!(
            a.resolve(&t, true, "contoso.com").canonical,
            b.resolve(&t, true, "contoso.com").canonical
        );
    }
}
