"""The PostgreSQL fixture gives a working server with q3c available."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa


def test_postgres_fixture_serves_queries(postgres_url: Callable[[str], str]) -> None:
    engine = sa.create_engine(postgres_url("fixture_check"))
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 1 + 1")).scalar() == 2
        conn.execute(sa.text("create extension if not exists q3c"))
        d = conn.execute(sa.text("select q3c_dist(0, 0, 0, 1)")).scalar()
        assert abs(float(d) - 1.0) < 1e-9
    engine.dispose()
