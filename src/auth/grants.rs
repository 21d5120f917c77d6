//! What a session may do, from `permissions:` in `schema.yaml`: the admin everything, a role
//! what its entry grants, and a role without an entry nothing (deny by default).
//!
//! The schema builder asks [`Grants`] which fields a role's schema has; resolvers and the runs
//! endpoints ask it again with the request's [`Session`] for what depends on the session (the
//! row filter's variables, whose runs are one's own).

use std::sync::Arc;

use crate::config::{
    RolePermissions, RunPermissions, Scope, SelectPermission, SourceDef, TriggerAction,
};
use crate::run::{Run, RunError, RunFilter};

use super::Session;

/// The grants of one schema's callers.
#[derive(Debug, Clone)]
pub enum Grants {
    /// Everything (the admin secret, or no auth at all).
    Admin,
    /// What a role's entry in `permissions:` grants (an empty entry: nothing).
    Role(Arc<RolePermissions>),
}

/// How a role reads one source.
#[derive(Debug, Clone)]
pub struct Select {
    /// The columns it sees, in the source's order (`None`: all).
    pub visible: Option<Arc<[usize]>>,
    /// The row filter with session variables still unsubstituted (`None`: every row).
    pub row_filter: Option<SelectPermission>,
    /// The most rows a query returns.
    pub limit: Option<usize>,
}

impl Select {
    pub fn sees(&self, column: usize) -> bool {
        self.visible.as_ref().is_none_or(|v| v.contains(&column))
    }
}

impl Grants {
    /// A role's grants: nothing when `permissions:` has no entry for it.
    pub fn role(name: &str, permissions: Option<&RolePermissions>) -> Grants {
        Grants::Role(Arc::new(permissions.cloned().unwrap_or_else(|| {
            RolePermissions {
                role: name.to_owned(),
                sources: Vec::new(),
                runs: RunPermissions::default(),
            }
        })))
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Grants::Admin)
    }

    /// How these callers read `source` (`None`: they cannot).
    pub fn select(&self, source: &SourceDef) -> Option<Select> {
        match self {
            Grants::Admin => Some(Select {
                visible: None,
                row_filter: None,
                limit: None,
            }),
            Grants::Role(role) => {
                let select = role.source(&source.name)?.select.as_ref()?;
                let all = select.columns.len() == source.columns.len();
                Some(Select {
                    visible: (!all).then(|| select.columns.clone().into()),
                    row_filter: select.filter.is_some().then(|| select.clone()),
                    limit: select.limit,
                })
            }
        }
    }

    /// Whether these callers may do `action` with the triggers of `source`.
    pub fn trigger(&self, source: &str, action: TriggerAction) -> bool {
        match self {
            Grants::Admin => true,
            Grants::Role(role) => role.source(source).is_some_and(|s| s.may(action)),
        }
    }

    /// Whether these callers may do anything with runs.
    pub fn any_runs(&self) -> bool {
        match self {
            Grants::Admin => true,
            Grants::Role(role) => role.runs != RunPermissions::default(),
        }
    }

    /// The runs grants (everything for the admin).
    pub fn runs(&self) -> RunPermissions {
        match self {
            Grants::Admin => RunPermissions {
                start: crate::config::Kinds::All,
                read: Scope::All,
                cancel: Scope::All,
                append: Scope::All,
            },
            Grants::Role(role) => role.runs.clone(),
        }
    }

    /// What `session` may do with runs.
    pub fn run_access(&self, session: &Session) -> RunAccess {
        RunAccess {
            role: session.role.clone(),
            subject: (!self.is_admin()).then(|| session.subject()),
            grants: self.runs(),
        }
    }
}

/// What one session may do with runs.
#[derive(Debug, Clone)]
pub struct RunAccess {
    role: String,
    /// Recorded as a run's `created_by` (`None` for the admin).
    subject: Option<String>,
    grants: RunPermissions,
}

impl RunAccess {
    /// Who the runs this session starts are recorded as created by.
    pub fn created_by(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// Whether it may start runs of `kind`.
    pub fn start(&self, kind: &str) -> Result<(), RunError> {
        if self.grants.start.contains(kind) {
            Ok(())
        } else {
            Err(RunError::Forbidden(format!(
                "role {} may not start runs of kind {kind:?}",
                self.role
            )))
        }
    }

    /// What a start returns: the new run, or the earlier one with the same idempotency key
    /// when it is this session's (or one it may read); another's is not revealed.
    pub fn earlier_start(&self, run: Run, created: bool) -> Result<Run, RunError> {
        let own = self.subject.is_some() && run.created_by == self.subject;
        if created || own || self.covers(self.grants.read, &run) {
            Ok(run)
        } else {
            Err(RunError::Forbidden(
                "this idempotency key is taken by a run of another creator: use another key".into(),
            ))
        }
    }

    /// `run`, if it may read it; a run it may not read does not exist for it.
    pub fn read(&self, run: Run) -> Result<Run, RunError> {
        if self.covers(self.grants.read, &run) {
            Ok(run)
        } else {
            Err(RunError::NotFound(run.id))
        }
    }

    /// Whether it may cancel `run`.
    pub fn cancel(&self, run: &Run) -> Result<(), RunError> {
        self.act(self.grants.cancel, run, "cancel")
    }

    /// Whether it may append events to `run` (a worker's run-scoped token needs no grant).
    pub fn append(&self, run: &Run) -> Result<(), RunError> {
        self.act(self.grants.append, run, "append to")
    }

    /// Narrows a listing to the runs it may read.
    pub fn restrict(&self, filter: &mut RunFilter) -> Result<(), RunError> {
        match self.grants.read {
            Scope::None => Err(RunError::Forbidden(format!(
                "role {} may not read runs",
                self.role
            ))),
            Scope::Own => {
                filter.created_by = Some(self.subject.clone().unwrap_or_default());
                Ok(())
            }
            Scope::All => Ok(()),
        }
    }

    fn covers(&self, scope: Scope, run: &Run) -> bool {
        self.subject.is_none()
            || scope.covers(
                run.created_by.as_deref(),
                self.subject.as_deref().unwrap_or_default(),
            )
    }

    fn act(&self, scope: Scope, run: &Run, what: &str) -> Result<(), RunError> {
        if !self.covers(self.grants.read, run) && !self.covers(scope, run) {
            return Err(RunError::NotFound(run.id.clone()));
        }
        if !self.covers(scope, run) {
            return Err(RunError::Forbidden(format!(
                "role {} may not {what} run {}",
                self.role, run.id
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Kinds;

    fn run(created_by: Option<&str>) -> Run {
        Run {
            id: "r".into(),
            kind: "import".into(),
            status: "running".into(),
            input: serde_json::json!({}),
            idempotency_key: None,
            created_at: String::new(),
            started_at: None,
            finished_at: None,
            next_seq: 1,
            terminal_type: None,
            terminal_message: None,
            created_by: created_by.map(str::to_owned),
        }
    }

    fn session(user: &str) -> Session {
        let vars = BTreeMap::from([("x-hasura-user-id".to_owned(), user.to_owned())]);
        Session::of("user", vars, None)
    }

    #[test]
    fn own_runs_are_the_ones_the_subject_started() {
        let grants = Grants::Role(Arc::new(RolePermissions {
            role: "user".into(),
            sources: Vec::new(),
            runs: RunPermissions {
                start: Kinds::Only(vec!["import".into()]),
                read: Scope::Own,
                cancel: Scope::Own,
                append: Scope::None,
            },
        }));
        let alice = grants.run_access(&session("alice"));
        assert_eq!(alice.created_by(), Some("alice"));
        assert!(alice.start("import").is_ok());
        assert!(matches!(alice.start("export"), Err(RunError::Forbidden(_))));
        assert!(alice.read(run(Some("alice"))).is_ok());
        assert!(matches!(
            alice.read(run(Some("bob"))),
            Err(RunError::NotFound(_))
        ));
        assert!(matches!(alice.read(run(None)), Err(RunError::NotFound(_))));
        assert!(alice.cancel(&run(Some("alice"))).is_ok());
        assert!(matches!(
            alice.cancel(&run(Some("bob"))),
            Err(RunError::NotFound(_))
        ));
        // Readable, but not its to append to.
        assert!(matches!(
            alice.append(&run(Some("alice"))),
            Err(RunError::Forbidden(_))
        ));
        let mut filter = RunFilter::default();
        alice.restrict(&mut filter).unwrap();
        assert_eq!(filter.created_by.as_deref(), Some("alice"));

        let nobody = Grants::role("guest", None).run_access(&session("carol"));
        assert!(nobody.restrict(&mut RunFilter::default()).is_err());
        assert!(nobody.start("import").is_err());

        let admin = Grants::Admin.run_access(&Session::admin());
        assert_eq!(admin.created_by(), None);
        assert!(admin.cancel(&run(Some("bob"))).is_ok());
    }
}
