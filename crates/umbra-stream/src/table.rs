//! The compacted-topic table materializer, shaped like kube's reflector store: a pure,
//! synchronous [`TableState::apply`], a restore phase up to the end offsets captured at
//! start-up, and a readiness gate that opens only when every partition has reached them.
//! Nothing should read a table before [`Table::wait_ready`] returns.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio_util::sync::CancellationToken;
use umbra_schemas::{EntityKey, Record};

use crate::config::KafkaSettings;
use crate::http::Gate;
use crate::metrics::Metrics;
use crate::processor::TopicCodecs;
use crate::reader::{RawRecord, RestoringReader};
use crate::registry::SchemaRegistry;
use crate::StreamError;

/// Rows of a table and how far into each partition they reflect.
#[derive(Debug, Clone)]
pub struct TableState<V> {
    rows: HashMap<String, V>,
    /// Next offset to read, per partition.
    positions: HashMap<i32, i64>,
}

impl<V> Default for TableState<V> {
    fn default() -> Self {
        Self {
            rows: HashMap::new(),
            positions: HashMap::new(),
        }
    }
}

impl<V> TableState<V> {
    /// Applies the record at (`partition`, `offset`): an upsert, or a delete when `value` is a
    /// tombstone. Records at or below the position already applied are ignored, so a replay
    /// after a reconnect changes nothing.
    pub fn apply(&mut self, partition: i32, offset: i64, key: String, value: Option<V>) {
        let next = self.positions.entry(partition).or_insert(0);
        if offset < *next {
            return;
        }
        *next = offset + 1;
        match value {
            Some(v) => {
                self.rows.insert(key, v);
            }
            None => {
                self.rows.remove(&key);
            }
        }
    }

    /// Records that a partition's position advanced without a record to apply (compacted
    /// away, transaction markers, or a bad record skipped).
    pub fn advance(&mut self, partition: i32, next_offset: i64) {
        let p = self.positions.entry(partition).or_insert(0);
        *p = (*p).max(next_offset);
    }

    /// True when every partition in `end_offsets` has been read up to its end offset.
    pub fn caught_up(&self, end_offsets: &HashMap<i32, i64>) -> bool {
        end_offsets
            .iter()
            .all(|(p, end)| self.positions.get(p).copied().unwrap_or(0) >= *end)
    }

    /// The row of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.rows.get(key)
    }

    /// All rows.
    pub fn rows(&self) -> &HashMap<String, V> {
        &self.rows
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A live table: restored from its topic, then kept up to date by a background task.
pub struct Table<V> {
    state: Arc<RwLock<TableState<V>>>,
    ready: Gate,
    topic: String,
}

impl<V> Clone for Table<V> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            ready: self.ready.clone(),
            topic: self.topic.clone(),
        }
    }
}

impl<V: Record> Table<V> {
    /// Starts materializing `topic`. `ready` is the readiness gate to open after restore.
    pub async fn start<K: EntityKey>(
        kafka_settings: &KafkaSettings,
        registry: Arc<dyn SchemaRegistry>,
        topic: String,
        ready: Gate,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Result<Self, StreamError> {
        let codecs: Arc<TopicCodecs<K, V>> =
            Arc::new(TopicCodecs::new(registry, topic.clone()).await?);
        let reader = RestoringReader::open(kafka_settings, &topic).await?;
        let table = Self {
            state: Arc::new(RwLock::new(TableState::default())),
            ready,
            topic: topic.clone(),
        };
        let driver = table.clone();
        let gate = table.ready.clone();
        let rows_gauge = metrics.table_rows.with_label_values(&[&topic]);
        let restored_gauge = metrics.table_restored_rows.with_label_values(&[&topic]);
        restored_gauge.set(0);
        let bad = metrics
            .dead_lettered
            .with_label_values(&[&topic, "table-decode"]);
        tokio::spawn(reader.run(gate, shutdown, metrics, move |r: RawRecord| {
            let (codecs, driver, rows_gauge, restored_gauge, bad) = (
                codecs.clone(),
                driver.clone(),
                rows_gauge.clone(),
                restored_gauge.clone(),
                bad.clone(),
            );
            async move {
                match decode_row(&codecs, &r).await {
                    Ok((k, v)) => driver.write().apply(r.partition, r.offset, k, v),
                    Err(why) => {
                        // The table has a single writer; a bad row there is a bug upstream.
                        // Skip it so the table stays available, and make it visible.
                        tracing::error!(topic = %driver.topic, partition = r.partition, offset = r.offset, error = %why, "skipping undecodable table record");
                        bad.inc();
                        driver.write().advance(r.partition, r.offset + 1);
                    }
                }
                let rows = driver.read().len() as i64;
                rows_gauge.set(rows);
                // The gate opens after the last restore record is applied.
                if !driver.is_ready() {
                    restored_gauge.set(rows);
                }
            }
        }));
        Ok(table)
    }
}

impl<V> Table<V> {
    /// True once the restore phase is over.
    pub fn is_ready(&self) -> bool {
        self.ready.is_open()
    }

    /// Waits for the restore phase to end.
    pub async fn wait_ready(&self, shutdown: &CancellationToken) -> Result<(), StreamError> {
        tokio::select! {
            _ = shutdown.cancelled() => Err(StreamError::Cancelled("restoring a table")),
            _ = self.ready.opened() => Ok(()),
        }
    }

    /// A read view. Synchronous: do not hold it across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, TableState<V>> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TableState<V>> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads a table topic once, up to the end offsets captured at start, and returns its rows:
/// the restore of a table whose only writer is the caller (the shadow manager's own table).
/// Undecodable rows are skipped and counted, as in [`Table::start`].
pub async fn restore_rows<K: EntityKey, V: Record>(
    kafka_settings: &KafkaSettings,
    registry: Arc<dyn SchemaRegistry>,
    topic: &str,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<HashMap<String, V>, StreamError> {
    let codecs: TopicCodecs<K, V> = TopicCodecs::new(registry, topic.to_string()).await?;
    let reader = RestoringReader::open(kafka_settings, topic).await?;
    let state = Arc::new(std::sync::Mutex::new(TableState::<V>::default()));
    let codecs = Arc::new(codecs);
    let bad = metrics
        .dead_lettered
        .with_label_values(&[topic, "table-decode"]);
    let sink = state.clone();
    let done = reader
        .restore(shutdown, metrics.clone(), move |r: RawRecord| {
            let (codecs, sink, bad) = (codecs.clone(), sink.clone(), bad.clone());
            async move {
                let decoded = decode_row(&codecs, &r).await;
                let mut st = sink.lock().unwrap_or_else(|p| p.into_inner());
                match decoded {
                    Ok((k, v)) => st.apply(r.partition, r.offset, k, v),
                    Err(why) => {
                        tracing::error!(partition = r.partition, offset = r.offset, error = %why, "skipping undecodable table record");
                        bad.inc();
                        st.advance(r.partition, r.offset + 1);
                    }
                }
            }
        })
        .await;
    if !done {
        return Err(StreamError::Cancelled("restoring a table"));
    }
    let state = std::mem::take(&mut *state.lock().unwrap_or_else(|p| p.into_inner()));
    for gauge in [&metrics.table_rows, &metrics.table_restored_rows] {
        gauge.with_label_values(&[topic]).set(state.len() as i64);
    }
    Ok(state.rows)
}

/// Decodes one table record into its key id and value (`None` for a tombstone).
async fn decode_row<K: EntityKey, V: Record>(
    codecs: &TopicCodecs<K, V>,
    r: &RawRecord,
) -> Result<(String, Option<V>), String> {
    let key = match &r.key {
        Some(k) => codecs
            .decode_key(k)
            .await
            .map(|k| k.id().to_string())
            .map_err(|e| e.to_string())?,
        None => return Err("null key on a table topic".to_string()),
    };
    let value = match &r.value {
        None => None,
        Some(v) => Some(codecs.decode_value(v).await.map_err(|e| e.to_string())?),
    };
    Ok((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(u8, u32),
        Delete(u8),
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..8, any::<u32>()).prop_map(|(k, v)| Op::Upsert(k, v)),
            2 => (0u8..8).prop_map(Op::Delete),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        /// The table equals a HashMap model after any sequence of upserts, tombstones and
        /// restarts (a restart rebuilds from the whole log, replaying it twice to model a
        /// reconnect), and is caught up exactly when the whole log has been read.
        #[test]
        fn table_matches_hashmap_model(ops in proptest::collection::vec(op(), 0..80), parts in 1i32..4) {
            let mut log: Vec<(i32, i64, String, Option<u32>)> = Vec::new();
            let mut next: HashMap<i32, i64> = HashMap::new();
            let mut model: HashMap<String, u32> = HashMap::new();
            let mut table = TableState::<u32>::default();
            for op in ops {
                match op {
                    Op::Restart => {
                        let mut rebuilt = TableState::default();
                        let end: HashMap<i32, i64> = next.clone();
                        for (p, o, k, v) in &log {
                            prop_assert!(!rebuilt.caught_up(&end), "ready before catch-up");
                            rebuilt.apply(*p, *o, k.clone(), *v);
                        }
                        for (p, o, k, v) in &log {
                            rebuilt.apply(*p, *o, k.clone(), *v);
                        }
                        prop_assert!(rebuilt.caught_up(&end));
                        table = rebuilt;
                    }
                    Op::Upsert(k, v) => {
                        let key = format!("w{k}");
                        let p = i32::from(k) % parts;
                        let o = *next.entry(p).or_insert(0);
                        next.insert(p, o + 1);
                        log.push((p, o, key.clone(), Some(v)));
                        table.apply(p, o, key.clone(), Some(v));
                        model.insert(key, v);
                    }
                    Op::Delete(k) => {
                        let key = format!("w{k}");
                        let p = i32::from(k) % parts;
                        let o = *next.entry(p).or_insert(0);
                        next.insert(p, o + 1);
                        log.push((p, o, key.clone(), None));
                        table.apply(p, o, key.clone(), None);
                        model.remove(&key);
                    }
                }
                prop_assert_eq!(table.rows(), &model);
            }
        }
    }

    #[test]
    fn not_caught_up_until_every_partition_reaches_its_end() {
        let mut t = TableState::<u32>::default();
        let end = HashMap::from([(0, 2), (1, 1)]);
        assert!(!t.caught_up(&end));
        t.apply(0, 0, "a".into(), Some(1));
        t.apply(0, 1, "a".into(), None);
        assert!(!t.caught_up(&end));
        t.apply(1, 0, "b".into(), Some(2));
        assert!(t.caught_up(&end));
        assert_eq!(t.get("a"), None);
        assert_eq!(t.get("b"), Some(&2));
        assert!(TableState::<u32>::default().caught_up(&HashMap::from([(0, 0)])));
    }
}
