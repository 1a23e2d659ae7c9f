//! Accounts kept outside the API's store — a cluster's replicated accounts bucket, which every
//! node reads — and the four account APIs answered against them (`account_import`,
//! `multiaccount_import`, `account_check`, `account_delete`), with the same fields, checks and
//! error codes as against a store.

use serde_json::{Map, Value, json};

use super::fields::{Fields, account_items, import_list};
use super::rest::answer;
use super::wire::ok_reply;
use super::{Api, Reply, error_reply};
use crate::error::Error;

/// Where accounts live when the store does not hold them all.
pub trait Directory: Send + Sync {
    /// Imports `user` (idempotent). `user` has passed the UserID checks.
    fn import(&self, user: &str) -> Result<(), Error>;
    /// Whether `user` was imported.
    fn exists(&self, user: &str) -> Result<bool, Error>;
    /// Deletes `user` everywhere; 70107 when it does not exist.
    fn delete(&self, user: &str) -> Result<(), Error>;
}

impl Api {
    /// Whether `route` (as [`admit`](Api::admit) returns it) is an account API, which a
    /// [`Directory`] answers.
    pub fn is_account_api(route: &str) -> bool {
        route.starts_with("im_open_login_svc/")
    }

    /// Answers an account API already admitted ([`admit`](Api::admit)) against `dir`.
    pub fn directory_call(&self, route: &str, body: &[u8], dir: &dyn Directory) -> Reply {
        let answer = (|| {
            let map = super::body_object(body)?;
            let f = Fields(&map);
            match route {
                "im_open_login_svc/account_import" => {
                    let user = f.string(&["UserID", "Identifier"], 70402)?;
                    crate::account::check_user_id(user)?;
                    dir.import(user)?;
                    Ok(Map::new())
                }
                "im_open_login_svc/multiaccount_import" => {
                    let users = import_list(&f)?;
                    if users.len() > crate::store::MAX_IMPORT_BATCH {
                        return Err(Error::TooManyAccounts { count: users.len() });
                    }
                    let failed: Vec<&str> = users
                        .into_iter()
                        .filter(|u| {
                            crate::account::check_user_id(u).is_err() || dir.import(u).is_err()
                        })
                        .collect();
                    Ok(answer([("FailAccounts", json!(failed))]))
                }
                "im_open_login_svc/account_check" => {
                    let items = account_items(&f, "CheckItem")?
                        .iter()
                        .map(|u| {
                            let status = if dir.exists(u)? {
                                "Imported"
                            } else {
                                "NotImported"
                            };
                            Ok(json!({"UserID": u, "ResultCode": 0, "ResultInfo": "", "AccountStatus": status}))
                        })
                        .collect::<Result<_, Error>>()?;
                    Ok(answer([("ResultItem", Value::Array(items))]))
                }
                "im_open_login_svc/account_delete" => {
                    let items = account_items(&f, "DeleteItem")?
                        .iter()
                        .map(|u| match dir.delete(u) {
                            Ok(()) => json!({"UserID": u, "ResultCode": 0, "ResultInfo": ""}),
                            Err(e) => json!({"UserID": u, "ResultCode": e.code(), "ResultInfo": e.to_string()}),
                        })
                        .collect();
                    Ok(answer([("ResultItem", Value::Array(items))]))
                }
                other => Err(Error::UnknownApi(format!("/v4/{other}"))),
            }
        })();
        match answer {
            Ok(fields) => ok_reply(fields),
            Err(e) => error_reply(&e),
        }
    }
}
