"""a partial index on Optuna's RUNNING trials, by study

Revision ID: 0007
Revises: 0006

Every reaper tick asks which studies have a RUNNING trial without a lease, and Optuna's
fail_stale_trials asks each study with open leases for its RUNNING trials. Optuna's `trials`
table has indexes on trial_id and study_id only, so the first read scanned every trial in the
database and the second every trial of the study, every tick. This index holds only the running
trials: both reads cost what is running, not what has ever run. Optuna never reads or names it;
like 0006's triggers, it adds to an Optuna table and changes none of its columns.
"""
from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_RUNNING = sa.text("state = 'RUNNING'")


def upgrade() -> None:
    op.create_index('hpo_ix_trials_running', 'trials', ['study_id'], unique=False, postgresql_where=_RUNNING)


def downgrade() -> None:
    op.drop_index('hpo_ix_trials_running', table_name='trials', postgresql_where=_RUNNING)
