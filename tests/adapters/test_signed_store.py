"""The signed on-disk store behind the caches of compiled JAX programs and built TensorFlow graphs: only this
user's signed entries are read, a bad entry is a miss, the folder stays bounded."""

import os

from bnconf.adapters import signed_store


def _store(tmp_path, name="cache"):
    folder = tmp_path / name
    signed_store.secret.cache_clear()
    return folder, signed_store.secret(folder, "test", "BNCONF_TEST_CACHE")


def test_an_entry_reads_back_under_its_key_text_only(tmp_path):
    folder, key = _store(tmp_path)
    signed_store.write(folder, "key one", [b"a", b"", b"c" * 1000], key)
    assert signed_store.read(folder, "key one", key) == [b"a", b"", b"c" * 1000]
    assert signed_store.read(folder, "key two", key) is None
    assert oct((folder / "key").stat().st_mode & 0o777) == "0o600"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"


def test_an_entry_signed_under_another_key_or_altered_is_removed_unread(tmp_path):
    folder, key = _store(tmp_path, "mine")
    other, other_key = _store(tmp_path, "theirs")
    signed_store.write(other, "k", [b"payload"], other_key)
    name = signed_store.digest_of("k")
    (folder / "programs" / name).write_bytes((other / "programs" / name).read_bytes())
    assert signed_store.read(folder, "k", key) is None and not (folder / "programs" / name).exists()
    signed_store.write(folder, "k", [b"payload"], key)
    data = bytearray((folder / "programs" / name).read_bytes())
    data[-1] ^= 1
    (folder / "programs" / name).write_bytes(bytes(data))
    assert signed_store.read(folder, "k", key) is None


def test_a_folder_others_may_write_turns_the_store_off_with_one_line(tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    signed_store.secret.cache_clear()
    assert signed_store.secret(shared, "test", "BNCONF_TEST_CACHE") is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "writable by others" in err[0] and "BNCONF_TEST_CACHE=off" in err[0]


def test_the_folder_is_pruned_to_its_bound_least_recently_used_first(tmp_path):
    for i in range(10):
        (tmp_path / f"e{i}").write_bytes(b"x" * 100)
        os.utime(tmp_path / f"e{i}", ns=(i * 10**9, i * 10**9))
    signed_store.prune(tmp_path, limit=500)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e6", "e7", "e8", "e9"]
