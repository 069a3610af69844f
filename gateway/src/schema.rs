//! The gateway's whole schema: every migration of the ledger, in the order
//! they run (a database made by an older version runs those after its own
//! last one; see [`hotline_durable::db`]). The SQL that reads and writes
//! each table is in the module that keeps it.

use hotline_durable::outbox;

/// The first version: the tickets with their current row, their events,
/// the coordination queue.
pub const TICKETS: &str = "
CREATE TABLE tickets (
    id TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    handler TEXT NOT NULL,
    parent_id TEXT,
    category TEXT NOT NULL,
    urgent INTEGER NOT NULL,
    status INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE events (
    ticket_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (ticket_id, seq)
) WITHOUT ROWID;
CREATE TABLE coordination (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id TEXT NOT NULL UNIQUE,
    origin TEXT NOT NULL,
    category TEXT NOT NULL,
    rejected_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    reject_ms INTEGER NOT NULL,
    assigned_city TEXT,
    assign_ms INTEGER
);
";

/// A migration of the first version: `city_totals` was replaced by the
/// windows and is dropped by a later one.
pub const STATS: &str = "
CREATE TABLE city_totals (
    city TEXT NOT NULL,
    direction TEXT NOT NULL,
    category TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (city, direction, category)
) WITHOUT ROWID;
CREATE TABLE city_status (
    city TEXT NOT NULL,
    direction TEXT NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (city, direction, status)
) WITHOUT ROWID;
";

/// The call transfers and their moves ([`crate::recorder`]).
pub const TRANSFERS: &str = "
CREATE TABLE transfers (
    id TEXT PRIMARY KEY,
    origin TEXT NOT NULL,
    target TEXT NOT NULL,
    category TEXT NOT NULL,
    state INTEGER NOT NULL,
    reason TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    answered_ms INTEGER,
    ended_ms INTEGER,
    body BLOB NOT NULL
);
CREATE INDEX transfers_live ON transfers (state) WHERE ended_ms IS NULL;
-- The cumulative tables below were replaced by the windows (windows.rs)
-- and are dropped by a later migration.
-- direction: 'out' (started here), 'in' (offered here), 'answered' (here)
CREATE TABLE transfer_totals (
    city TEXT NOT NULL,
    direction TEXT NOT NULL,
    category TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (city, direction, category)
) WITHOUT ROWID;
CREATE TABLE transfer_outcomes (
    city TEXT NOT NULL,
    state TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (city, state)
) WITHOUT ROWID;
CREATE TABLE transfer_answers (
    city TEXT PRIMARY KEY,
    n INTEGER NOT NULL,
    answer_ms_sum INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Which city each ticket was ever delivered to: a ticket that coordination
/// sends back to a city that held it before counts as received there once.
pub const DELIVERIES: &str = "
CREATE TABLE deliveries (
    ticket_id TEXT NOT NULL,
    city TEXT NOT NULL,
    PRIMARY KEY (ticket_id, city)
) WITHOUT ROWID;
";

/// The counters of the statistics windows: counts and duration
/// histograms per hour, day, month and since the start ([`crate::windows`]).
pub const WINDOWS: &str = "
CREATE TABLE window_counts (
    grain INTEGER NOT NULL,
    period INTEGER NOT NULL,
    city TEXT NOT NULL,
    category TEXT NOT NULL,
    metric INTEGER NOT NULL,
    detail TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (grain, period, city, category, metric, detail)
) WITHOUT ROWID;
CREATE TABLE window_hist (
    grain INTEGER NOT NULL,
    period INTEGER NOT NULL,
    city TEXT NOT NULL,
    category TEXT NOT NULL,
    metric INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (grain, period, city, category, metric, bucket)
) WITHOUT ROWID;
";

/// The tickets' resolution deadline in the ledger, and the waiting part of
/// the coordination queue, each indexed so the dashboard reads them without
/// a scan. Deadlines are in calendar hours until the supervision rules bring
/// the working-day calendar.
pub const TICKET_DUE: &str = "
ALTER TABLE tickets ADD COLUMN due_ms INTEGER;
ALTER TABLE tickets ADD COLUMN overdue INTEGER NOT NULL DEFAULT 0;
CREATE INDEX tickets_due ON tickets (due_ms) WHERE due_ms IS NOT NULL;
-- Open tickets past their deadline, per handler and category: moved when a
-- ticket passes its deadline (the sweep, or at once when it is set in the
-- past) and when it is resolved, reopened or handed to another city.
CREATE TABLE overdue_open (
    city TEXT NOT NULL,
    category TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (city, category)
) WITHOUT ROWID;
-- How far the overdue sweep has looked.
CREATE TABLE sweeps (name TEXT PRIMARY KEY, at_ms INTEGER NOT NULL);
CREATE INDEX coordination_waiting ON coordination (pos) WHERE assigned_city IS NULL;
";

/// The flow log every watcher reads from its cursor ([`crate::flow`]).
pub const FLOW_LOG: &str = "
CREATE TABLE flow_log (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    body BLOB NOT NULL
);
";

/// The cumulative tables of the first statistics, replaced by the windows
/// (whose grain 0 is since the start).
pub const DROP_CUMULATIVE: &str = "
DROP TABLE city_totals;
DROP TABLE transfer_totals;
DROP TABLE transfer_answers;
DROP TABLE transfer_outcomes;
";

/// Supervision: staged deadlines, the recent reports the merge and the
/// rules read, merged reports, matters and their months, escalations
/// ([`crate::supervision`]).
pub const SUPERVISION: &str = "
ALTER TABLE tickets ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tickets ADD COLUMN stage TEXT;
ALTER TABLE tickets ADD COLUMN resolve_due_ms INTEGER;
ALTER TABLE tickets ADD COLUMN late_ms INTEGER;
CREATE INDEX tickets_late ON tickets (late_ms) WHERE late_ms IS NOT NULL;
-- The key of the citizens' keyed hash: made at its first use (by
-- `citizen_key`), never leaves the database. Databases made before it was
-- made in Rust have it from this migration's first version.
CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
-- The reports of the recent past (the longest window of the rules): their
-- fingerprints, matter, citizen. Older ones are pruned.
CREATE TABLE recent (
    w INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket_id TEXT NOT NULL UNIQUE,
    target TEXT NOT NULL,
    category TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    signature BLOB NOT NULL,
    place TEXT NOT NULL,
    root TEXT NOT NULL,
    merged_into TEXT,
    citizen TEXT NOT NULL
);
CREATE INDEX recent_created ON recent (created_ms);
CREATE INDEX recent_root ON recent (root, created_ms);
CREATE INDEX recent_citizen ON recent (citizen, created_ms);
-- Locality-sensitive buckets of the recent reports' signatures.
-- With the key of the report's house numbers, so that a lookup passes over
-- another address without reading its report.
CREATE TABLE recent_bands (
    key INTEGER NOT NULL,
    w INTEGER NOT NULL,
    num INTEGER NOT NULL,
    PRIMARY KEY (key, w)
) WITHOUT ROWID;
CREATE INDEX recent_bands_w ON recent_bands (w);
-- Reports merged into a ticket (合并派单), for its snapshot.
CREATE TABLE links (
    ticket_id TEXT NOT NULL,
    pos INTEGER NOT NULL,
    report BLOB NOT NULL,
    PRIMARY KEY (ticket_id, pos)
) WITHOUT ROWID;
-- Every matter (its first ticket), and its reports per month and city.
CREATE TABLE matters (
    root TEXT PRIMARY KEY,
    category TEXT NOT NULL,
    handler TEXT NOT NULL,
    subject TEXT NOT NULL,
    place TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE matter_months (
    month INTEGER NOT NULL,
    city TEXT NOT NULL,
    root TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (month, city, root)
) WITHOUT ROWID;
CREATE INDEX matter_months_top ON matter_months (month, city, n);
-- The supervision ledger.
CREATE TABLE escalations (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    rule INTEGER NOT NULL,
    subject_key TEXT NOT NULL,
    reason TEXT NOT NULL,
    category TEXT NOT NULL,
    handler TEXT NOT NULL,
    department TEXT NOT NULL,
    subject TEXT NOT NULL,
    state INTEGER NOT NULL,
    open_ms INTEGER NOT NULL,
    close_ms INTEGER,
    tickets INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX escalations_open ON escalations (rule, subject_key) WHERE state = 1;
CREATE INDEX escalations_open_ms ON escalations (open_ms);
CREATE TABLE escalation_tickets (
    n INTEGER NOT NULL,
    ticket_id TEXT NOT NULL,
    pos INTEGER NOT NULL,
    PRIMARY KEY (n, ticket_id)
) WITHOUT ROWID;
CREATE INDEX escalation_tickets_by_ticket ON escalation_tickets (ticket_id);
CREATE TABLE escalation_actions (
    n INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    note TEXT NOT NULL,
    department TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (n, pos)
) WITHOUT ROWID;
CREATE INDEX escalation_actions_at ON escalation_actions (at_ms);
";

/// The merge detector's buckets live in the working set now, made from the
/// signatures at start; a replica reads the reports other replicas filed in
/// a bucket by this index.
pub const WORKING_SET: &str = "
DROP TABLE recent_bands;
CREATE INDEX recent_bucket ON recent (target, category, w);
";

/// The journal of counters not yet in their tables ([`crate::fold`]), a
/// row per commit, keyed by the process that wrote it.
pub const FOLD_JOURNAL: &str = "
CREATE TABLE fold_journal (
    writer INTEGER NOT NULL,
    n INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (writer, n)
) WITHOUT ROWID;
";

/// The indexes of the recent reports that only a shared ledger reads (the
/// report rules' reads of the store, another replica's reports caught up
/// by bucket): on SQLite the working set answers those, so they were only
/// written, three b-trees a report.
pub const SQLITE_LEAN: &str = "-- sqlite only
DROP INDEX recent_root;
DROP INDEX recent_citizen;
DROP INDEX recent_bucket;
";

/// The duration histograms packed, a row per window, city, category and
/// duration (its buckets one blob: [`crate::windows::Buckets`]), written at
/// the journal's checkpoints. What `window_hist` holds, a row per bucket,
/// was written before and is still read.
pub const HIST_PACKED: &str = "
CREATE TABLE window_hist_packed (
    grain INTEGER NOT NULL,
    period INTEGER NOT NULL,
    city TEXT NOT NULL,
    category TEXT NOT NULL,
    metric INTEGER NOT NULL,
    buckets BLOB NOT NULL,
    PRIMARY KEY (grain, period, city, category, metric)
) WITHOUT ROWID;
";

/// Every migration, in order. Only ever appended to.
pub const MIGRATIONS: [&str; 16] = [
    TICKETS,
    outbox::SCHEMA,
    STATS,
    TRANSFERS,
    DELIVERIES,
    outbox::SCHEMA_IN_ORDER,
    WINDOWS,
    TICKET_DUE,
    FLOW_LOG,
    DROP_CUMULATIVE,
    outbox::SCHEMA_TRACE,
    SUPERVISION,
    WORKING_SET,
    FOLD_JOURNAL,
    SQLITE_LEAN,
    HIST_PACKED,
];
