"""two indexes on Optuna's trials: the running ones by study, and (study_id, trial_id)

Revision ID: 0007
Revises: 0006

Optuna's `trials` table has indexes on trial_id and on study_id alone. So:

- Every reaper tick asks which studies have a RUNNING trial without a lease, and Optuna's
  fail_stale_trials asks each study with open leases for its RUNNING trials: the first read
  scanned every trial in the database, the second every trial of the study, every tick. The
  partial index holds only the running trials: both reads cost what is running, not what has
  ever run.
- A claim numbers its new trial from the study's previous one (storage.NumberingRDBStorage), and
  each request's view refresh reads the study's trials newer than the last it saw
  (coordination.StudyTrials). (study_id, trial_id) finds both at once, whatever the size of the
  study, and whatever the planner's statistics say.

Optuna never reads or names them; like 0006's triggers, they add to an Optuna table and change
none of its columns.
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
    op.create_index('hpo_ix_trials_study_trial', 'trials', ['study_id', 'trial_id'], unique=False)


def downgrade() -> None:
    op.drop_index('hpo_ix_trials_study_trial', table_name='trials')
    op.drop_index('hpo_ix_trials_running', table_name='trials', postgresql_where=_RUNNING)
