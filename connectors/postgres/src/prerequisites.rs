//! What the relay needs from the server, checked in one place: `wal_level = logical` and the
//! replication limits, a publication that publishes inserts into the outbox table, a `pgoutput`
//! slot of this database, the trigger that stamps `seq` (polling) and the one that notifies
//! (optional). `run` checks them on every start and `check` reports each; only `migrate` creates
//! the publication and the slot (`ensure_*`).
//!
//! Invariant: a missing or invalidated slot is a fatal, explained error — never re-created
//! behind the operator's back, because a new slot starts at "now" and would silently skip
//! whatever was committed in between.

use outbox_relay_core::Lsn;

use crate::{quote_ident, PostgresError, Session, TableName};

/// The slot as `pg_replication_slots` shows it, once it passed the checks.
#[derive(Clone, Debug)]
pub struct SlotState {
    /// Where streaming resumes.
    pub confirmed_flush: Lsn,
}

pub async fn check_wal_level(session: &Session) -> Result<(), PostgresError> {
    let level = show(session, "wal_level").await?;
    if level != "logical" {
        return Err(PostgresError::WalLevel { level });
    }
    Ok(())
}

/// The publication exists and publishes inserts of `table` (when there is an outbox table),
/// unfiltered. The table is recognised by name or, given its `oid`, as that relation (so a
/// renamed outbox, still followed by OID, is found under its new name; a re-created one under
/// the old name).
pub async fn check_publication(
    session: &Session,
    publication: &str,
    table: Option<&TableName>,
    oid: Option<u32>,
) -> Result<(), PostgresError> {
    let row = session
        .timed(
            "reading the publication",
            session.client().query_opt(
                "select pubinsert from pg_publication where pubname = $1",
                &[&publication],
            ),
        )
        .await?;
    let Some(row) = row else {
        return Err(PostgresError::MissingPublication { publication: publication.into() });
    };
    let Some(table) = table else { return Ok(()) };
    let publishes_inserts: bool = row.get(0);
    let listed = session
        .timed(
            "reading the publication's tables",
            session.client().query_opt(
                "select 1 from pg_publication_tables t where t.pubname = $1 \
                 and ((t.schemaname = $2 and t.tablename = $3) \
                      or format('%I.%I', t.schemaname, t.tablename)::regclass = $4::oid) \
                 limit 1",
                &[&publication, &table.schema, &table.name, &oid],
            ),
        )
        .await?
        .is_some();
    if !publishes_inserts || !listed {
        return Err(PostgresError::PublicationLacksTable {
            publication: publication.into(),
            table: table.to_string(),
        });
    }
    check_publication_filters(session, publication, table, oid).await
}

/// PostgreSQL 15+ lets a publication filter rows (`where ...`) and columns: rows it filters
/// out never reach the slot, which moves past them as if they were not there.
async fn check_publication_filters(
    session: &Session,
    publication: &str,
    table: &TableName,
    oid: Option<u32>,
) -> Result<(), PostgresError> {
    let version: i32 = session
        .timed(
            "reading the server version",
            session.client().query_one("select current_setting('server_version_num')::int", &[]),
        )
        .await?
        .get(0);
    if version < 150_000 {
        return Ok(());
    }
    // A table published through `for all tables` or `for tables in schema` has no row here,
    // and neither form can filter.
    let row = session
        .timed(
            "reading the publication's filters",
            session.client().query_one(
                "select coalesce(bool_or(pr.prqual is not null), false), \
                        coalesce(bool_or(pr.prattrs is not null), false) \
                 from pg_publication_rel pr join pg_publication p on p.oid = pr.prpubid \
                 where p.pubname = $1 and (pr.prrelid = to_regclass($2) or pr.prrelid = $3::oid)",
                &[&publication, &table.quoted(), &oid],
            ),
        )
        .await?;
    let (rows_filtered, columns_listed): (bool, bool) = (row.get(0), row.get(1));
    let problem = match (rows_filtered, columns_listed) {
        (false, false) => return Ok(()),
        (true, false) => "has a row filter (WHERE)",
        (false, true) => "has a column list",
        (true, true) => "has a row filter (WHERE) and a column list",
    };
    Err(PostgresError::PublicationFilters {
        publication: publication.into(),
        table: table.to_string(),
        problem: problem.into(),
    })
}

/// The slot exists, is a `pgoutput` slot of this database, was not invalidated, and no other
/// process holds it.
pub async fn check_slot(session: &Session, slot: &str) -> Result<SlotState, PostgresError> {
    let row = session
        .timed(
            "reading the replication slot",
            session.client().query_opt(
                "select plugin, slot_type, database = current_database(), active_pid, \
                 wal_status, confirmed_flush_lsn::text \
                 from pg_replication_slots where slot_name = $1",
                &[&slot],
            ),
        )
        .await?;
    let Some(row) = row else {
        return Err(PostgresError::MissingSlot { slot: slot.into() });
    };
    let wrong = |problem: String| PostgresError::WrongSlot { slot: slot.into(), problem };
    let plugin: Option<String> = row.get(0);
    let kind: String = row.get(1);
    let this_database: Option<bool> = row.get(2);
    let active_pid: Option<i32> = row.get(3);
    let wal_status: Option<String> = row.get(4);
    let confirmed: Option<String> = row.get(5);
    if kind != "logical" {
        return Err(wrong(format!("is a {kind} slot")));
    }
    if plugin.as_deref() != Some("pgoutput") {
        return Err(wrong(format!("uses plugin {plugin:?}, not pgoutput")));
    }
    if this_database != Some(true) {
        return Err(wrong("belongs to another database".into()));
    }
    let confirmed_text = confirmed.unwrap_or_else(|| "0/0".into());
    if wal_status.as_deref() == Some("lost") {
        return Err(PostgresError::SlotInvalidated {
            slot: slot.into(),
            confirmed: confirmed_text,
        });
    }
    if let Some(pid) = active_pid {
        return Err(PostgresError::SlotInUse { slot: slot.into(), pid });
    }
    let confirmed_flush = confirmed_text
        .parse()
        .map_err(|_| wrong(format!("has an unreadable confirmed_flush_lsn {confirmed_text:?}")))?;
    Ok(SlotState { confirmed_flush })
}

/// `max_replication_slots` and `max_wal_senders`: WAL tailing needs at least one of each.
#[derive(Clone, Copy, Debug)]
pub struct ReplicationLimits {
    pub slots: i32,
    pub senders: i32,
}

impl ReplicationLimits {
    pub async fn read(session: &Session) -> Result<Self, PostgresError> {
        let row = session
            .timed(
                "reading the replication limits",
                session.client().query_one(
                    "select current_setting('max_replication_slots')::int, \
                            current_setting('max_wal_senders')::int",
                    &[],
                ),
            )
            .await?;
        Ok(Self { slots: row.get(0), senders: row.get(1) })
    }

    pub fn suffice(&self) -> bool {
        self.slots > 0 && self.senders > 0
    }
}

/// Creates the publication (inserts only) for `table`, or adds the table to it. Returns what was
/// done, for `migrate`'s report.
pub async fn ensure_publication(
    session: &Session,
    publication: &str,
    table: Option<&TableName>,
) -> Result<Option<String>, PostgresError> {
    let exists = session
        .timed(
            "reading the publication",
            session
                .client()
                .query_opt("select 1 from pg_publication where pubname = $1", &[&publication]),
        )
        .await?
        .is_some();
    let quoted = quote_ident(publication);
    if !exists {
        let target = table.map_or_else(String::new, |t| format!(" for table {}", t.quoted()));
        let sql = format!("create publication {quoted}{target} with (publish = 'insert')");
        session.timed("creating the publication", session.client().batch_execute(&sql)).await?;
        return Ok(Some(format!("created publication {publication}")));
    }
    let Some(table) = table else { return Ok(None) };
    match check_publication(session, publication, Some(table), None).await {
        Ok(()) => return Ok(None),
        Err(PostgresError::PublicationLacksTable { .. }) => {}
        // A filter is the operator's choice to undo, not migrate's.
        Err(other) => return Err(other),
    }
    let sql = format!("alter publication {quoted} add table {}", table.quoted());
    session
        .timed("adding the outbox table to the publication", session.client().batch_execute(&sql))
        .await?;
    Ok(Some(format!("added {table} to publication {publication}")))
}

/// Creates the `pgoutput` slot if it does not exist. Returns what was done.
pub async fn ensure_slot(session: &Session, slot: &str) -> Result<Option<String>, PostgresError> {
    let exists = session
        .timed(
            "reading the replication slot",
            session
                .client()
                .query_opt("select 1 from pg_replication_slots where slot_name = $1", &[&slot]),
        )
        .await?
        .is_some();
    if exists {
        return Ok(None);
    }
    let row = session
        .timed(
            "creating the replication slot",
            session.client().query_one(
                "select lsn::text from pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            ),
        )
        .await?;
    let lsn: String = row.get(0);
    Ok(Some(format!("created replication slot {slot} at {lsn}")))
}

/// The poll source's gap rule (see `holes`) holds only if every row's `seq` is drawn by
/// `outbox_relay.stamp_outbox_seq` — BEFORE INSERT, per row, firing in ordinary sessions, with
/// no BEFORE INSERT row trigger after it (triggers fire in name order) that could change `seq` —
/// from a `CACHE 1` sequence that grows.
pub(crate) async fn check_seq_stamping(
    session: &Session,
    table: &TableName,
) -> Result<(), PostgresError> {
    let problem =
        |problem: String| PostgresError::SeqStamping { table: table.to_string(), problem };
    let stamp = session
        .timed(
            "looking for the seq trigger",
            session.client().query_opt(
                "select t.tgenabled::text, t.tgtype & 7 = 7, \
                        t.tgfoid = 'outbox_relay.stamp_outbox_seq'::regproc, \
                        split_part(encode(t.tgargs, 'escape'), '\\000', 1), \
                        s.seqcache, s.seqincrement \
                 from pg_trigger t \
                 left join pg_sequence s \
                   on s.seqrelid = to_regclass(split_part(encode(t.tgargs, 'escape'), '\\000', 1)) \
                 where t.tgrelid = to_regclass($1) and t.tgname = 'outbox_relay_stamp_seq'",
                &[&table.quoted()],
            ),
        )
        .await?;
    let Some(stamp) = stamp else {
        return Err(PostgresError::MissingSeqTrigger { table: table.to_string() });
    };
    let enabled: String = stamp.get(0);
    match enabled.as_str() {
        "D" => return Err(PostgresError::MissingSeqTrigger { table: table.to_string() }),
        "R" => {
            return Err(problem(
                "trigger outbox_relay_stamp_seq fires only in replica sessions (enable replica \
                 trigger); `alter table ... enable trigger outbox_relay_stamp_seq`"
                    .into(),
            ))
        }
        _ => {}
    }
    let (before_insert_row, stamps): (bool, bool) = (stamp.get(1), stamp.get(2));
    if !before_insert_row || !stamps {
        return Err(problem(
            "trigger outbox_relay_stamp_seq is not `before insert for each row execute function \
             outbox_relay.stamp_outbox_seq(...)`"
                .into(),
        ));
    }
    let sequence: String = stamp.get(3);
    let (cache, increment): (Option<i64>, Option<i64>) = (stamp.get(4), stamp.get(5));
    match (cache, increment) {
        (None, _) | (_, None) => {
            return Err(problem(format!("the trigger's sequence {sequence:?} does not exist")))
        }
        (Some(cache), _) if cache != 1 => {
            return Err(problem(format!(
                "sequence {sequence} has CACHE {cache}: sessions would draw values out of \
                 order; `alter sequence {sequence} cache 1`"
            )))
        }
        (_, Some(increment)) if increment <= 0 => {
            return Err(problem(format!(
                "sequence {sequence} has INCREMENT {increment}: seq must grow"
            )))
        }
        _ => {}
    }
    let later = session
        .timed(
            "looking for triggers that could change seq",
            session.client().query(
                "select tgname::text from pg_trigger where tgrelid = to_regclass($1) \
                 and not tgisinternal and tgenabled <> 'D' and tgtype & 7 = 7 \
                 and tgname > 'outbox_relay_stamp_seq' order by tgname",
                &[&table.quoted()],
            ),
        )
        .await?;
    if let Some(row) = later.first() {
        let name: String = row.get(0);
        return Err(problem(format!(
            "trigger {name:?} is a BEFORE INSERT row trigger that fires after \
             outbox_relay_stamp_seq and could change seq; rename it to sort before \
             \"outbox_relay_stamp_seq\" or make it an AFTER trigger"
        )));
    }
    Ok(())
}

/// Whether `table` has an enabled `outbox_relay_notify` trigger (polling wakes on its NOTIFY
/// instead of waiting for `poll_interval`).
pub async fn has_notify_trigger(
    session: &Session,
    table: &TableName,
) -> Result<bool, PostgresError> {
    let trigger = session
        .timed(
            "looking for the notify trigger",
            session.client().query_opt(
                "select 1 from pg_trigger where tgrelid = to_regclass($1) \
                 and tgname = 'outbox_relay_notify' and tgenabled <> 'D'",
                &[&table.quoted()],
            ),
        )
        .await?;
    Ok(trigger.is_some())
}

async fn show(session: &Session, setting: &str) -> Result<String, PostgresError> {
    let row = session
        .timed(
            "reading a server setting",
            session
                .client()
                .query_one("select setting from pg_settings where name = $1", &[&setting]),
        )
        .await?;
    Ok(row.get(0))
}
