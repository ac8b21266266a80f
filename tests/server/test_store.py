"""The SQLite store on its own: ordering, recovery modes, bounds."""
from __future__ import annotations

import time

from service.store import Store


def test_order_front_and_explicit_numbers(tmp_path):
    st = Store(tmp_path / "q.sqlite3")
    assert st.add("a", "{}", {}, []) == 0
    assert st.add("b", "{}", {}, []) == 1
    assert st.add("c", "{}", {}, [], front=True) == -2
    assert st.add("d", "{}", {}, [], number=0.5) == 0.5
    assert [i.id for i in st.pending()] == ["c", "a", "d", "b"]
    assert st.take_next().id == "c" and st.remaining() == 4
    st.close()
    st = Store(tmp_path / "q.sqlite3")  # the counter survives a restart
    assert st.add("e", "{}", {}, []) == 3


def test_recover_marks_failed_or_requeues(tmp_path):
    st = Store(tmp_path / "q.sqlite3")
    st.add("a", '{"1": {}}', {"client_id": "x"}, ["1"])
    st.add("b", "{}", {}, [])
    assert st.take_next().id == "a"
    st.close()  # the process "dies" with a running
    st = Store(tmp_path / "q.sqlite3")
    assert st.recover(requeue=True) == ["a"]
    assert [i.id for i in st.pending()] == ["a", "b"]
    st.take_next()
    st.close()
    st = Store(tmp_path / "q.sqlite3")
    assert st.recover() == ["a"]
    h = st.get("a")
    assert h.state == "done" and h.outcome == "crashed" and h.result["status"]["status_str"] == "error"
    assert [i.id for i in st.pending()] == ["b"]


def test_bounds_by_count_and_age(tmp_path):
    st = Store(tmp_path / "q.sqlite3", max_items=5)
    for i in range(12):
        st.add(f"p{i}", "{}", {}, [])
        st.finish(st.take_next().id, "success", {"outputs": {}})
    assert [i.id for i in st.history()] == [f"p{i}" for i in range(7, 12)]
    st.max_age_s = 0.0
    time.sleep(0.01)
    assert st.prune() == 5 and st.history() == []
    st.add("x", "{}", {}, [])
    assert st.delete_history(None) == 0 and st.remaining() == 1
