//! Cluster-wide key management: install, use, remove and list gossip keys on
//! every member at once, through Serf's internal `_serf_*-key` queries (so a
//! mixed Shoal/Serf cluster rotates keys together).

use std::collections::BTreeMap;

use shoal_gossip::messages::{KeyRequest, KeyResponse, serf_kind};
use shoal_gossip::mp::{self, Wire};
use shoal_gossip::{QueryParams, decode_key};

use crate::driver::{AgentError, AgentHandle, QueryUpdate};

/// A key operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOp {
    /// Add a key to every keyring.
    Install,
    /// Make a key primary everywhere.
    Use,
    /// Remove a key everywhere.
    Remove,
    /// List the keys of every member.
    List,
}

impl KeyOp {
    fn query(self) -> &'static str {
        match self {
            KeyOp::Install => "_serf_install-key",
            KeyOp::Use => "_serf_use-key",
            KeyOp::Remove => "_serf_remove-key",
            KeyOp::List => "_serf_list-keys",
        }
    }
}

/// What the cluster answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyReport {
    /// Per node, an error or warning message.
    pub messages: BTreeMap<String, String>,
    /// For `List`: each key (base64) and how many members have it.
    pub keys: BTreeMap<String, usize>,
    /// For `List`: each primary key and how many members use it.
    pub primary_keys: BTreeMap<String, usize>,
    /// Members that should answer.
    pub num_nodes: usize,
    /// Members that answered.
    pub num_resp: usize,
    /// Members that reported a failure.
    pub num_err: usize,
}

impl KeyReport {
    /// Serf's verdict: an error unless every member answered without error.
    pub fn verdict(&self) -> Result<(), String> {
        if self.num_err != 0 {
            return Err(format!("{}/{} nodes reported failure", self.num_err, self.num_nodes));
        }
        if self.num_resp != self.num_nodes {
            return Err(format!("{}/{} nodes reported success", self.num_resp, self.num_nodes));
        }
        Ok(())
    }
}

impl AgentHandle {
    /// Runs a key operation on every member and collects the answers.
    ///
    /// `key` is base64 (ignored for `List`). The report is returned even when
    /// some members failed; [`KeyReport::verdict`] says whether all succeeded.
    pub async fn key_op(&self, op: KeyOp, key: Option<&str>) -> Result<KeyReport, AgentError> {
        let raw = match (op, key) {
            (KeyOp::List, _) => Vec::new(),
            (_, Some(k)) => decode_key(k).map_err(|e| AgentError::Join(format!("invalid key: {e}")))?,
            (_, None) => return Err(AgentError::Join("a key is required".into())),
        };
        let mut payload = vec![serf_kind::KEY_REQUEST];
        KeyRequest { key: raw }.put(&mut payload);
        let num_nodes = self.members().borrow().alive().count();
        let mut updates =
            self.query(QueryParams { name: op.query().into(), payload, ..Default::default() }).await?;
        let mut report = KeyReport { num_nodes, ..KeyReport::default() };
        while let Some(update) = updates.recv().await {
            let QueryUpdate::Response { from, payload } = update else { continue };
            report.num_resp += 1;
            match payload.split_first() {
                Some((&serf_kind::KEY_RESPONSE, body)) => match mp::decode::<KeyResponse>(body) {
                    Ok(r) => {
                        if !r.result {
                            report.num_err += 1;
                        }
                        if !r.message.is_empty() {
                            report.messages.insert(from, r.message);
                        }
                        for k in r.keys {
                            *report.keys.entry(k).or_default() += 1;
                        }
                        if !r.primary_key.is_empty() {
                            *report.primary_keys.entry(r.primary_key).or_default() += 1;
                        }
                    }
                    Err(e) => {
                        report.num_err += 1;
                        report.messages.insert(from, format!("Failed to decode key query response: {e}"));
                    }
                },
                _ => {
                    report.num_err += 1;
                    report.messages.insert(from, "Invalid key query response type".into());
                }
            }
            if report.num_resp == report.num_nodes {
                break;
            }
        }
        Ok(report)
    }
}
