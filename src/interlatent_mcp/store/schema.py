"""The store's schema as an ordered list of forward migrations.

`PRAGMA user_version` holds the number of migrations applied. Opening a store applies the missing
ones in order, each in its own transaction; a store whose version is higher than `SCHEMA_VERSION`
was written by a newer interlatent and is rejected. Never edit a migration that has shipped:
append a new one. docs/store.md describes every table for people who open the file directly.
"""

from __future__ import annotations

# Version 1: policies, layers, runs, episodes and the chunked activation and step data.
_V1_CAPTURE = """
CREATE TABLE policies (
    policy_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    observation_space TEXT NOT NULL,
    action_space TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (source, fingerprint)
);

CREATE TABLE layers (
    layer_id INTEGER PRIMARY KEY,
    policy_id INTEGER NOT NULL REFERENCES policies (policy_id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    width INTEGER NOT NULL CHECK (width > 0),
    kind TEXT NOT NULL DEFAULT 'module',
    UNIQUE (policy_id, name)
);

CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY,
    policy_id INTEGER NOT NULL REFERENCES policies (policy_id),
    env_id TEXT NOT NULL,
    env_kwargs TEXT NOT NULL DEFAULT '{}',
    seed INTEGER,
    status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'interrupted', 'failed')),
    tags TEXT NOT NULL DEFAULT '[]',
    requested_episodes INTEGER,
    requested_steps INTEGER,
    n_steps INTEGER NOT NULL DEFAULT 0,
    n_episodes INTEGER NOT NULL DEFAULT 0,
    chunk_steps INTEGER NOT NULL,
    variables TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    duration_s REAL,
    error TEXT
);

CREATE TABLE run_layers (
    run_id INTEGER NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    layer_id INTEGER NOT NULL REFERENCES layers (layer_id),
    PRIMARY KEY (run_id, layer_id)
);

CREATE TABLE episodes (
    run_id INTEGER NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    episode INTEGER NOT NULL,
    seed INTEGER,
    first_step INTEGER NOT NULL,
    length INTEGER NOT NULL,
    return REAL NOT NULL,
    terminated INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, episode)
);

CREATE TABLE activation_chunks (
    run_id INTEGER NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    layer_id INTEGER NOT NULL REFERENCES layers (layer_id),
    chunk INTEGER NOT NULL,
    step_start INTEGER NOT NULL,
    n_steps INTEGER NOT NULL,
    width INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX activation_chunks_key ON activation_chunks (run_id, layer_id, chunk);

CREATE TABLE step_chunks (
    run_id INTEGER NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    chunk INTEGER NOT NULL,
    step_start INTEGER NOT NULL,
    n_steps INTEGER NOT NULL,
    episode BLOB NOT NULL,
    t BLOB NOT NULL,
    flags BLOB NOT NULL,
    variables BLOB NOT NULL,
    PRIMARY KEY (run_id, chunk)
);
"""

# Version 2: derived statistics, correlations and precomputed top activations.
_V2_ANALYSIS = """
CREATE TABLE analyses (
    analysis_id INTEGER PRIMARY KEY,
    policy_id INTEGER NOT NULL REFERENCES policies (policy_id),
    run_ids TEXT NOT NULL,
    n_steps INTEGER NOT NULL,
    params TEXT NOT NULL,
    created_at TEXT NOT NULL,
    duration_s REAL
);

CREATE TABLE analysis_layers (
    analysis_id INTEGER NOT NULL REFERENCES analyses (analysis_id) ON DELETE CASCADE,
    layer_id INTEGER NOT NULL REFERENCES layers (layer_id),
    PRIMARY KEY (analysis_id, layer_id)
);

CREATE TABLE channel_stats (
    analysis_id INTEGER NOT NULL REFERENCES analyses (analysis_id) ON DELETE CASCADE,
    layer_id INTEGER NOT NULL REFERENCES layers (layer_id),
    channel INTEGER NOT NULL,
    count INTEGER NOT NULL,
    nan_count INTEGER NOT NULL,
    inf_count INTEGER NOT NULL,
    mean REAL,
    std REAL,
    min REAL,
    max REAL,
    quantiles TEXT NOT NULL,
    frac_active REAL,
    hist_edges TEXT NOT NULL,
    hist_counts TEXT NOT NULL,
    dead INTEGER NOT NULL,
    PRIMARY KEY (analysis_id, layer_id, channel)
);

CREATE TABLE correlations (
    analysis_id INTEGER NOT NULL REFERENCES analyses (analysis_id) ON DELETE CASCADE,
    layer_id INTEGER NOT NULL REFERENCES layers (layer_id),
    channel INTEGER NOT NULL,
    variable TEXT NOT NULL,
    r REAL,
    PRIMARY KEY (analysis_id, layer_id, channel, variable)
);
CREATE INDEX correlations_by_variable ON correlations (analysis_id, layer_id, variable);

CREATE TABLE top_activations (
    analysis_id INTEGER NOT NULL REFERENCES analyses (analysis_id) ON DELETE CASCADE,
    layer_id INTEGER NOT NULL REFERENCES layers (layer_id),
    channel INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    step INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (analysis_id, layer_id, channel, rank)
);
"""

# Version 3: the investigation record (jobs, notes, explanations) and trained transcoders.
_V3_INVESTIGATION = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'complete', 'failed', 'cancelled', 'interrupted')),
    progress REAL NOT NULL DEFAULT 0,
    total REAL,
    message TEXT,
    result TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);

CREATE TABLE notes (
    note_id INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    author TEXT NOT NULL,
    text TEXT NOT NULL,
    layer_id INTEGER REFERENCES layers (layer_id),
    channel INTEGER,
    run_id INTEGER,
    tags TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX notes_by_channel ON notes (layer_id, channel);

CREATE TABLE explanations (
    explanation_id INTEGER PRIMARY KEY,
    layer_id INTEGER NOT NULL REFERENCES layers (layer_id),
    channel INTEGER NOT NULL,
    version INTEGER NOT NULL,
    text TEXT NOT NULL,
    predicate TEXT,
    author TEXT NOT NULL,
    method TEXT NOT NULL,
    evidence TEXT NOT NULL DEFAULT '{}',
    scores TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    UNIQUE (layer_id, channel, version)
);

CREATE VIRTUAL TABLE explanations_fts USING fts5(
    text, predicate, content='explanations', content_rowid='explanation_id'
);
CREATE TRIGGER explanations_fts_insert AFTER INSERT ON explanations BEGIN
    INSERT INTO explanations_fts (rowid, text, predicate)
    VALUES (new.explanation_id, new.text, coalesce(new.predicate, ''));
END;
CREATE TRIGGER explanations_fts_delete AFTER DELETE ON explanations BEGIN
    INSERT INTO explanations_fts (explanations_fts, rowid, text, predicate)
    VALUES ('delete', old.explanation_id, old.text, coalesce(old.predicate, ''));
END;
CREATE TRIGGER explanations_fts_update AFTER UPDATE ON explanations BEGIN
    INSERT INTO explanations_fts (explanations_fts, rowid, text, predicate)
    VALUES ('delete', old.explanation_id, old.text, coalesce(old.predicate, ''));
    INSERT INTO explanations_fts (rowid, text, predicate)
    VALUES (new.explanation_id, new.text, coalesce(new.predicate, ''));
END;

CREATE TABLE transcoders (
    transcoder_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    policy_id INTEGER NOT NULL REFERENCES policies (policy_id),
    input_layer TEXT NOT NULL,
    output_layer TEXT NOT NULL,
    architecture TEXT NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    weights BLOB NOT NULL,
    latent_layer_id INTEGER REFERENCES layers (layer_id),
    created_at TEXT NOT NULL
);
"""

MIGRATIONS: tuple[str, ...] = (_V1_CAPTURE, _V2_ANALYSIS, _V3_INVESTIGATION)
SCHEMA_VERSION = len(MIGRATIONS)
