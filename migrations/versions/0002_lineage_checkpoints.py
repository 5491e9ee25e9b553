"""lease lineage, lease tombstones for deleted studies, checkpoints

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('hpo_leases', sa.Column('attempt', sa.Integer(), server_default='1', nullable=False))
    op.add_column('hpo_leases', sa.Column('retry_of', sa.Integer(), nullable=True))
    op.alter_column('hpo_leases', 'study_id', existing_type=sa.Integer(), nullable=True)
    op.drop_constraint('fk_hpo_leases_study_id_hpo_studies', 'hpo_leases', type_='foreignkey')
    op.create_foreign_key(
        op.f('fk_hpo_leases_study_id_hpo_studies'), 'hpo_leases', 'hpo_studies', ['study_id'], ['id'], ondelete='SET NULL'
    )
    op.create_table(
        'hpo_checkpoints',
        sa.Column('trial_id', sa.BigInteger(), nullable=False),
        sa.Column('study_id', sa.Integer(), nullable=True),
        sa.Column('artifact_id', sa.String(length=200), nullable=False),
        sa.Column('step', sa.Integer(), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(
            ['study_id'], ['hpo_studies.id'], name=op.f('fk_hpo_checkpoints_study_id_hpo_studies'), ondelete='SET NULL'
        ),
        sa.PrimaryKeyConstraint('trial_id', name=op.f('pk_hpo_checkpoints')),
    )
    op.create_index(op.f('ix_hpo_checkpoints_study_id'), 'hpo_checkpoints', ['study_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_hpo_checkpoints_study_id'), table_name='hpo_checkpoints')
    op.drop_table('hpo_checkpoints')
    op.execute('DELETE FROM hpo_leases WHERE study_id IS NULL')
    op.drop_constraint('fk_hpo_leases_study_id_hpo_studies', 'hpo_leases', type_='foreignkey')
    op.create_foreign_key(
        op.f('fk_hpo_leases_study_id_hpo_studies'), 'hpo_leases', 'hpo_studies', ['study_id'], ['id'], ondelete='CASCADE'
    )
    op.alter_column('hpo_leases', 'study_id', existing_type=sa.Integer(), nullable=False)
    op.drop_column('hpo_leases', 'retry_of')
    op.drop_column('hpo_leases', 'attempt')
