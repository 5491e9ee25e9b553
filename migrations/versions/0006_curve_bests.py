"""each trial's best reported values, kept by triggers on Optuna's trial_intermediate_values

Revision ID: 0006
Revises: 0005

A report's pruning decision needs the best value of its trial's curve so far. Aggregating it on
every report reads every step of the trial; this table keeps it, one row per trial, updated by
the database itself whenever a value is written by any path (our report batches, Optuna's
set_trial_intermediate_value, a retry inheriting a curve). Optuna's table stays the source of
truth: an update or delete of a trial's values drops its row (a study's deletion would
otherwise re-aggregate once per deleted value), and a reader aggregates a trial that has values
but no row; the next insert rebuilds the row from the whole curve.
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

# The aggregate of one trial's stored values, as np.nanmin / np.nanmax read them (NaN rows left out).
_AGGREGATE = """
    SELECT {trial},
           min(intermediate_value) FILTER (WHERE intermediate_value_type = 'FINITE'),
           max(intermediate_value) FILTER (WHERE intermediate_value_type = 'FINITE'),
           coalesce(bool_or(intermediate_value_type = 'INF_POS'), false),
           coalesce(bool_or(intermediate_value_type = 'INF_NEG'), false)
      FROM trial_intermediate_values
"""

# Merging two aggregates of one trial: a row made concurrently by another transaction (both
# saw no row) holds values this one's aggregate may not see yet, and the other way round.
_MERGE = """
    ON CONFLICT (trial_id) DO UPDATE SET
        finite_min = least(hpo_curve_bests.finite_min, excluded.finite_min),
        finite_max = greatest(hpo_curve_bests.finite_max, excluded.finite_max),
        inf_pos = hpo_curve_bests.inf_pos OR excluded.inf_pos,
        inf_neg = hpo_curve_bests.inf_neg OR excluded.inf_neg
"""

_ON_INSERT = f"""
CREATE OR REPLACE FUNCTION hpo_curve_bests_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE hpo_curve_bests SET
        finite_min = CASE WHEN NEW.intermediate_value_type = 'FINITE' THEN least(finite_min, NEW.intermediate_value) ELSE finite_min END,
        finite_max = CASE WHEN NEW.intermediate_value_type = 'FINITE' THEN greatest(finite_max, NEW.intermediate_value) ELSE finite_max END,
        inf_pos = inf_pos OR NEW.intermediate_value_type = 'INF_POS',
        inf_neg = inf_neg OR NEW.intermediate_value_type = 'INF_NEG'
     WHERE trial_id = NEW.trial_id;
    IF NOT FOUND THEN
        -- The first value, or the first since the row was dropped: the whole curve, once.
        INSERT INTO hpo_curve_bests (trial_id, finite_min, finite_max, inf_pos, inf_neg)
        {_AGGREGATE.format(trial="NEW.trial_id")} WHERE trial_id = NEW.trial_id
        {_MERGE};
    END IF;
    RETURN NULL;
END $$
"""

_ON_CHANGE = """
CREATE OR REPLACE FUNCTION hpo_curve_bests_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM hpo_curve_bests WHERE trial_id = OLD.trial_id;
    RETURN NULL;
END $$
"""

_ON_TRUNCATE = """
CREATE OR REPLACE FUNCTION hpo_curve_bests_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM hpo_curve_bests;
    RETURN NULL;
END $$
"""


# The triggers, each with what it runs (`hpo serve` checks that they exist and are enabled:
# service/migrate.py).
TRIGGERS = {
    "hpo_curve_bests_insert": "AFTER INSERT ON trial_intermediate_values FOR EACH ROW",
    # Only a changed value or step can change the bests; Optuna rewrites a step's value when it
    # is reported again.
    "hpo_curve_bests_forget": "AFTER UPDATE OR DELETE ON trial_intermediate_values FOR EACH ROW",
    "hpo_curve_bests_truncate": "AFTER TRUNCATE ON trial_intermediate_values FOR EACH STATEMENT",
}


def install_triggers(execute) -> None:
    """The functions and triggers, (re)made; `hpo migrate` calls it again on a database that
    lost one (service/migrate.py)."""
    for function in (_ON_INSERT, _ON_CHANGE, _ON_TRUNCATE):
        execute(function)
    for name, when in TRIGGERS.items():
        execute(f"DROP TRIGGER IF EXISTS {name} ON trial_intermediate_values")
        execute(f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION {name}()")


def upgrade() -> None:
    op.create_table(
        'hpo_curve_bests',
        sa.Column('trial_id', sa.BigInteger(), nullable=False),
        sa.Column('finite_min', sa.Double(), nullable=True),
        sa.Column('finite_max', sa.Double(), nullable=True),
        sa.Column('inf_pos', sa.Boolean(), nullable=False),
        sa.Column('inf_neg', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('trial_id', name=op.f('pk_hpo_curve_bests')),
    )
    install_triggers(op.execute)
    # The curves stored before this migration (the triggers already hold the table's writers,
    # so none is missed between the two).
    op.execute(
        "INSERT INTO hpo_curve_bests (trial_id, finite_min, finite_max, inf_pos, inf_neg)"
        + _AGGREGATE.format(trial="trial_id")
        + " GROUP BY trial_id"
        + _MERGE
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER hpo_curve_bests_truncate ON trial_intermediate_values")
    op.execute("DROP TRIGGER hpo_curve_bests_forget ON trial_intermediate_values")
    op.execute("DROP TRIGGER hpo_curve_bests_insert ON trial_intermediate_values")
    op.execute("DROP FUNCTION hpo_curve_bests_truncate()")
    op.execute("DROP FUNCTION hpo_curve_bests_forget()")
    op.execute("DROP FUNCTION hpo_curve_bests_insert()")
    op.drop_table('hpo_curve_bests')
