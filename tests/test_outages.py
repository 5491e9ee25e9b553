"""The reaper's outage flag is set where the database fails, on the engines' connections
(service/engine/outages.py), whichever call meets it: not by the API's error renderer."""

from __future__ import annotations

import pytest
import sqlalchemy.exc
from sqlalchemy import create_engine, text

from service.engine.outages import Outages


def test_a_refused_connection_is_an_outage_and_a_bad_statement_is_not(db_url: str) -> None:
    outages = Outages()
    live = create_engine(db_url)
    outages.watch(live)
    with pytest.raises(sqlalchemy.exc.ProgrammingError), live.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert outages.settled(60)  # the database answered: a bug, not an outage
    live.dispose()

    away = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    outages.watch(away)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        away.connect()
    assert not outages.settled(60) and outages.settled(-1)
    away.dispose()


def test_an_outage_holds_the_reaper_for_a_grace_period(db_url: str, settings) -> None:  # type: ignore[no-untyped-def]
    """reap_study does nothing (fails no trial) until a grace period after the last outage."""
    from service.engine.reaper import reap_study
    from service.engine.state import EngineState
    from service.engine.storage import make_storage

    state = EngineState()
    state.outages.note()
    # Nothing is read: the study record is never touched while the outage is recent.
    assert reap_study(None, make_storage(db_url, settings), state, None) == 0  # type: ignore[arg-type]
