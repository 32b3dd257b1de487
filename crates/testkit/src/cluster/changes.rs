//! What a test does to its cluster: a graceful failover, a master killed, a slot moved.

use super::RedisCluster;

impl RedisCluster {
    /// `CLUSTER FAILOVER` on a replica of `key`'s master: the two swap roles with no
    /// write lost. Returns once the replica serves the slot.
    pub async fn fail_over(&self, key: &str) {
        let master = self.master_of(key).await;
        let replica = self.replica_of(master).await;
        let _: String = self.command(replica, &["CLUSTER", "FAILOVER"]).await;
        self.until_master_of(key, replica, "the replica to take over")
            .await;
        self.settled().await;
    }

    /// Kills `key`'s master with `SIGKILL` and waits until its replica has taken over
    /// (writes the master acknowledged but had not replicated are lost, as in
    /// production). Returns the killed node's port.
    pub async fn kill_master_of(&mut self, key: &str) -> u16 {
        let master = self.master_of(key).await;
        let replica = self.replica_of(master).await;
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == master)
            && let Some(mut server) = node.server.take()
        {
            let _ = server.kill();
            let _ = server.wait();
        }
        self.until_master_of(key, replica, "the replica to be promoted")
            .await;
        self.settled().await;
        master
    }

    /// Moves `key`'s slot, with its keys, to another master, the way `redis-cli --cluster
    /// reshard` does (`SETSLOT IMPORTING`/`MIGRATING`, `MIGRATE`, `SETSLOT NODE`): while
    /// it moves, clients are sent `ASK`, then `MOVED`. Returns the new master's port.
    pub async fn migrate_slot_of(&self, key: &str) -> u16 {
        let slot = self.slot_of(key).await.to_string();
        let nodes = self.nodes_view().await;
        let source_port = self.master_of(key).await;
        let source = nodes
            .iter()
            .find(|n| n.port == source_port)
            .expect("source");
        let target = nodes
            .iter()
            .find(|n| n.master && !n.failed && n.port != source_port)
            .expect("another master");
        let _: String = self
            .command(
                target.port,
                &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source.id],
            )
            .await;
        let _: String = self
            .command(
                source.port,
                &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target.id],
            )
            .await;
        loop {
            let keys: Vec<String> = self
                .command(source.port, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"])
                .await;
            if keys.is_empty() {
                break;
            }
            let port = target.port.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "10000", "KEYS"];
            migrate.extend(keys.iter().map(String::as_str));
            let _: String = self.command(source.port, &migrate).await;
        }
        for node in nodes.iter().filter(|n| n.master && !n.failed) {
            let _: String = self
                .command(
                    node.port,
                    &["CLUSTER", "SETSLOT", &slot, "NODE", &target.id],
                )
                .await;
        }
        self.until_master_of(key, target.port, "the slot to move")
            .await;
        self.settled().await;
        target.port
    }
}
