//! The states EC2 and SSM report, as enums: read once from the SDK's text at the edge, compared
//! as values everywhere else. A state this version does not know is kept, as AWS wrote it, in
//! `Other`, so it is shown to the operator and never mistaken for a known one.

macro_rules! state_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
            /// A value this version does not know, as AWS wrote it.
            Other(String),
        }

        impl $name {
            /// The text AWS uses for this state.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Other(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $($text => Self::$variant,)+
                    other => Self::Other(other.to_string()),
                }
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                Self::from(text.as_str())
            }
        }

        /// Nothing reported: an unknown, empty state.
        impl Default for $name {
            fn default() -> Self {
                Self::Other(String::new())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <String as serde::Deserialize>::deserialize(d).map(Self::from)
            }
        }
    };
}

state_enum! {
    /// An EC2 instance's state name.
    InstanceState {
        Pending = "pending",
        Running = "running",
        ShuttingDown = "shutting-down",
        Terminated = "terminated",
        Stopping = "stopping",
        Stopped = "stopped",
    }
}

state_enum! {
    /// An EBS snapshot's state.
    SnapshotState {
        Pending = "pending",
        Completed = "completed",
        Error = "error",
        Recoverable = "recoverable",
        Recovering = "recovering",
    }
}

state_enum! {
    /// An EBS volume's state.
    VolumeState {
        Creating = "creating",
        Available = "available",
        InUse = "in-use",
        Deleting = "deleting",
        Deleted = "deleted",
        Error = "error",
    }
}

state_enum! {
    /// The state of a volume's attachment to an instance.
    AttachmentState {
        Attaching = "attaching",
        Attached = "attached",
        Detaching = "detaching",
        Detached = "detached",
        Busy = "busy",
    }
}

state_enum! {
    /// The status of an SSM command or of one of its invocations.
    CommandStatus {
        Pending = "Pending",
        InProgress = "InProgress",
        Delayed = "Delayed",
        Success = "Success",
        Cancelled = "Cancelled",
        TimedOut = "TimedOut",
        Failed = "Failed",
        Cancelling = "Cancelling",
    }
}

impl CommandStatus {
    /// Only these four are final; every other status (the unknown ones included) may change.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Success | Self::Cancelled | Self::TimedOut | Self::Failed
        )
    }
}

state_enum! {
    /// Whether SSM hears from an instance's agent.
    PingStatus {
        Online = "Online",
        ConnectionLost = "ConnectionLost",
        Inactive = "Inactive",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_states_read_and_write_as_aws_spells_them() {
        assert_eq!(
            InstanceState::from("shutting-down"),
            InstanceState::ShuttingDown
        );
        assert_eq!(VolumeState::InUse.as_str(), "in-use");
        assert_eq!(CommandStatus::from("TimedOut"), CommandStatus::TimedOut);
        let json = serde_json::to_string(&SnapshotState::Completed).unwrap_or_default();
        assert_eq!(json, "\"completed\"");
        let back: Result<SnapshotState, _> = serde_json::from_str("\"pending\"");
        assert_eq!(back.ok(), Some(SnapshotState::Pending));
    }

    #[test]
    fn an_unknown_state_is_kept_and_never_a_known_one() {
        let odd = SnapshotState::from("archived");
        assert_eq!(odd, SnapshotState::Other("archived".into()));
        assert_eq!(odd.to_string(), "archived");
        // Case matters: AWS's own spelling only.
        assert_eq!(
            InstanceState::from("Running"),
            InstanceState::Other("Running".into())
        );
    }

    #[test]
    fn only_four_command_statuses_are_final() {
        for s in ["Success", "Cancelled", "TimedOut", "Failed"] {
            assert!(CommandStatus::from(s).is_final(), "{s}");
        }
        for s in [
            "Pending",
            "InProgress",
            "Delayed",
            "Cancelling",
            "Unknown",
            "",
        ] {
            assert!(!CommandStatus::from(s).is_final(), "{s}");
        }
    }
}
