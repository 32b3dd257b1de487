//! What the cluster looks like (`CLUSTER NODES`, `CLUSTER KEYSLOT`), and waiting until
//! every node agrees on it.

use super::{RedisCluster, SETTLE};
use crate::waiting::eventually;

/// A node's view of itself as `CLUSTER NODES` gives it.
#[derive(Debug, Clone)]
pub(super) struct NodeLine {
    pub(super) id: String,
    pub(super) port: u16,
    pub(super) master: bool,
    /// The id of its master, if it is a replica.
    master_id: Option<String>,
    pub(super) failed: bool,
    /// Slot ranges it serves (masters only).
    slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// The port of the master serving `key`'s slot now.
    pub async fn master_of(&self, key: &str) -> u16 {
        let slot = self.slot_of(key).await;
        let nodes = self.nodes_view().await;
        nodes
            .iter()
            .find(|n| n.master && !n.failed && serves(n, slot))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}: {nodes:?}"))
    }

    /// The ports of the live masters that serve slots now.
    pub async fn master_ports(&self) -> Vec<u16> {
        self.nodes_view()
            .await
            .iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .map(|n| n.port)
            .collect()
    }

    /// The port of a replica of the master on `master_port`, once the node asked knows
    /// one (on a loaded box a replica's meeting can come after the slots are settled).
    pub async fn replica_of(&self, master_port: u16) -> u16 {
        eventually(
            &format!("a replica of the master on {master_port}"),
            SETTLE,
            || async {
                let nodes = self.nodes_view().await;
                let master = nodes
                    .iter()
                    .find(|n| n.port == master_port)
                    .ok_or_else(|| format!("no master on {master_port}: {nodes:?}"))?;
                nodes
                    .iter()
                    .find(|n| !n.failed && n.master_id.as_deref() == Some(&master.id))
                    .map(|n| n.port)
                    .ok_or_else(|| format!("{nodes:?}"))
            },
        )
        .await
    }

    /// Waits until every live node says `cluster_state:ok`, each live node is a master
    /// with slots or a replica, and all agree on the masters.
    pub(super) async fn settled(&self) {
        eventually("the cluster to settle", SETTLE, || async {
            let mut views = vec![];
            for node in self.nodes.iter().filter(|n| n.server.is_some()) {
                let info: String = self
                    .try_command(node.port, &["CLUSTER", "INFO"])
                    .await
                    .map_err(|e| format!("{}: {e}", node.port))?;
                if !info.contains("cluster_state:ok") {
                    return Err(format!("{} is not ok yet", node.port));
                }
                let view = self.try_nodes_view(node.port).await?;
                if let Some(idle) = view
                    .iter()
                    .find(|n| n.master && n.slots.is_empty() && self.is_live(n.port))
                {
                    return Err(format!("{} is a master without slots yet", idle.port));
                }
                let mut masters: Vec<(u16, Vec<(u16, u16)>)> = view
                    .into_iter()
                    .filter(|n| n.master && !n.failed && !n.slots.is_empty())
                    .map(|n| (n.port, n.slots))
                    .collect();
                masters.sort();
                views.push(masters);
            }
            if views.windows(2).all(|pair| pair[0] == pair[1]) {
                Ok(())
            } else {
                Err(format!("the nodes disagree: {views:?}"))
            }
        })
        .await;
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub async fn slot_of(&self, key: &str) -> u16 {
        let slot: u16 = self
            .command(self.live_port(), &["CLUSTER", "KEYSLOT", key])
            .await;
        slot
    }

    /// Waits until `port` is the master of `key`'s slot.
    pub(super) async fn until_master_of(&self, key: &str, port: u16, what: &str) {
        eventually(what, SETTLE, || async {
            match self.try_master_of(key).await {
                Some(master) if master == port => Ok(()),
                other => Err(format!("master is {other:?}")),
            }
        })
        .await;
    }

    pub(super) async fn try_master_of(&self, key: &str) -> Option<u16> {
        let slot = self.slot_of(key).await;
        let nodes = self.try_nodes_view(self.live_port()).await.ok()?;
        nodes
            .iter()
            .find(|n| n.master && !n.failed && serves(n, slot))
            .map(|n| n.port)
    }

    pub(super) async fn nodes_view(&self) -> Vec<NodeLine> {
        self.try_nodes_view(self.live_port())
            .await
            .expect("CLUSTER NODES")
    }

    pub(super) async fn try_nodes_view(&self, port: u16) -> Result<Vec<NodeLine>, String> {
        let text: String = self
            .try_command(port, &["CLUSTER", "NODES"])
            .await
            .map_err(|e| e.to_string())?;
        Ok(text.lines().filter_map(parse_node_line).collect())
    }
}

fn serves(node: &NodeLine, slot: u16) -> bool {
    node.slots
        .iter()
        .any(|(from, to)| (*from..=*to).contains(&slot))
}

/// One line of `CLUSTER NODES`:
/// `<id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot> ...`.
fn parse_node_line(line: &str) -> Option<NodeLine> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let address = fields.get(1)?;
    let port = address
        .split('@')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let flags = fields.get(2)?;
    let slots = fields
        .iter()
        .skip(8)
        .filter(|s| !s.starts_with('['))
        .filter_map(|range| match range.split_once('-') {
            Some((from, to)) => Some((from.parse().ok()?, to.parse().ok()?)),
            None => range.parse().ok().map(|slot| (slot, slot)),
        })
        .collect();
    Some(NodeLine {
        id: (*fields.first()?).to_owned(),
        port,
        master: flags.contains("master"),
        master_id: Some(fields.get(3)?)
            .filter(|m| **m != "-")
            .map(|m| (*m).to_owned()),
        failed: flags.contains("fail") && !flags.contains("fail?"),
        slots,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_cluster_nodes_line() {
        let line =
            "07c3 127.0.0.1:30004@40004 myself,master - 0 0 4 connected 0-5460 6000 [7000->-abc]";
        let node = super::parse_node_line(line).expect("parses");
        assert_eq!((node.port, node.master, node.failed), (30004, true, false));
        assert_eq!(node.slots, [(0, 5460), (6000, 6000)]);
        assert_eq!(node.master_id, None);
        let replica = "9f1e 127.0.0.1:30005@40005 slave,fail 07c3 0 0 4 connected";
        let node = super::parse_node_line(replica).expect("parses");
        assert_eq!((node.master, node.failed), (false, true));
        assert_eq!(node.master_id.as_deref(), Some("07c3"));
    }
}
