//! The Kafka topics of Bulkhead: one registry row each, so that topic creation, producers,
//! consumers and docs agree on names, keys, value types and compaction.
//!
//! Names are `<prefix><suffix>`; the default prefix `bulkhead.` gives the names in
//! DESIGN.md (`bulkhead.flows.v1`, ...). A deployment that shares a cluster sets its own
//! prefix (e.g. `acme.bulkhead.`); tests use a unique prefix per test.

/// The default topic-name prefix.
pub const DEFAULT_PREFIX: &str = "bulkhead.";

/// A Bulkhead topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    Flows,
    Inventory,
    Control,
    Recommendations,
    Policy,
    Status,
    FlowsDeadLetter,
}

/// How a topic is laid out and what it carries.
#[derive(Clone, Copy, Debug)]
pub struct TopicSpec {
    pub topic: Topic,
    /// Name after the prefix.
    pub suffix: &'static str,
    /// What the message key is.
    pub key: &'static str,
    /// The protobuf message of the value.
    pub value: &'static str,
    /// `cleanup.policy=compact`: the latest value per key is the state.
    pub compacted: bool,
    /// Partitions when Bulkhead creates the topic. Topics whose consumers fold events in
    /// order (control, policy) have one partition: their order is the state's order.
    pub partitions: i32,
    pub producer: &'static str,
    pub consumers: &'static str,
}

/// Every topic, in data-flow order.
pub const TOPICS: &[TopicSpec] = &[
    TopicSpec {
        topic: Topic::Flows,
        suffix: "flows.v1",
        key: "host id",
        value: "bulkhead.v1.FlowBatch",
        compacted: false,
        partitions: 12,
        producer: "collector",
        consumers: "ingest",
    },
    TopicSpec {
        topic: Topic::Inventory,
        suffix: "inventory.v1",
        key: "host id",
        value: "bulkhead.v1.HostInventory",
        compacted: true,
        partitions: 3,
        producer: "collector",
        consumers: "ingest, analytics, enforcer",
    },
    TopicSpec {
        topic: Topic::Control,
        suffix: "control.v1",
        key: "id of the object changed",
        value: "bulkhead.v1.ControlEvent",
        compacted: false,
        partitions: 1,
        producer: "CLI / HTTP API",
        consumers: "analytics (policy state = fold of events)",
    },
    TopicSpec {
        topic: Topic::Recommendations,
        suffix: "recommendations.v1",
        key: "scope",
        value: "bulkhead.v1.Recommendation",
        compacted: false,
        partitions: 3,
        producer: "recommender",
        consumers: "analytics, console",
    },
    TopicSpec {
        topic: Topic::Policy,
        suffix: "policy.v1",
        key: "\"global\"",
        value: "bulkhead.v1.SignedPolicy",
        compacted: true,
        partitions: 1,
        producer: "policy workflow (serve)",
        consumers: "enforcer, ingest, analytics",
    },
    TopicSpec {
        topic: Topic::Status,
        suffix: "status.v1",
        key: "host id",
        value: "bulkhead.v1.EnforcerStatus",
        compacted: false,
        partitions: 3,
        producer: "enforcer",
        consumers: "analytics",
    },
    TopicSpec {
        topic: Topic::FlowsDeadLetter,
        suffix: "flows.dlq.v1",
        key: "<source topic>/<partition>/<offset>",
        value: "bulkhead.v1.DeadLetter",
        compacted: false,
        partitions: 3,
        producer: "ingest",
        consumers: "operators",
    },
];

/// The key of the single record on the policy topic.
pub const POLICY_KEY: &str = "global";

impl Topic {
    /// This topic's registry row.
    pub fn spec(self) -> &'static TopicSpec {
        TOPICS
            .iter()
            .find(|spec| spec.topic == self)
            .expect("every Topic has a row in TOPICS (checked by a test)")
    }

    /// The full topic name under `prefix`.
    pub fn name(self, prefix: &str) -> String {
        format!("{prefix}{}", self.spec().suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_topic_has_exactly_one_row_and_names_are_unique() {
        let all = [
            Topic::Flows,
            Topic::Inventory,
            Topic::Control,
            Topic::Recommendations,
            Topic::Policy,
            Topic::Status,
            Topic::FlowsDeadLetter,
        ];
        for topic in all {
            assert_eq!(
                TOPICS.iter().filter(|s| s.topic == topic).count(),
                1,
                "{topic:?}"
            );
        }
        let names: HashSet<_> = TOPICS.iter().map(|s| s.suffix).collect();
        assert_eq!(names.len(), TOPICS.len(), "duplicate topic suffix");
        assert_eq!(Topic::Flows.name(DEFAULT_PREFIX), "bulkhead.flows.v1");
        assert_eq!(
            Topic::FlowsDeadLetter.name(DEFAULT_PREFIX),
            "bulkhead.flows.dlq.v1"
        );
    }

    #[test]
    fn ordered_state_topics_have_one_partition() {
        assert_eq!(Topic::Control.spec().partitions, 1);
        assert_eq!(Topic::Policy.spec().partitions, 1);
        assert!(Topic::Policy.spec().compacted && Topic::Inventory.spec().compacted);
    }
}
