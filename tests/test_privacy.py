"""privacy: masking personal data, small-count suppression, secret scrubbing and scanning."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vespa_lib.ops import privacy

DSN = "postgresql://u:S3cretPassw0rd@localhost/db"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.abcDEF123"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("anna.smith@school.ac.uk", "a***@school.ac.uk"),
        ("Anna.Smith@School.AC.UK", "A***@School.AC.UK"),
        ("see bob@x.org and cara@y.com", "see b***@x.org and c***@y.com"),
        ("not an email", "not an email"),
        ("@vespa.academy", "@vespa.academy"),  # a domain alone is not personal data
        ("postgresql://user@db.host.org/x", "postgresql://user@db.host.org/x"),  # DSN user, not an email
        (None, None),
        (7, 7),
    ],
)
def test_mask_email(value, expected):
    assert privacy.mask_email(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Anna Smith", "A.S."), ("anna", "A."), ("Mary-Jane  O'Neil", "M.J.O."), ("", ""), ("  ", "  "), (None, None)],
)
def test_mask_name(value, expected):
    assert privacy.mask_name(value) == expected


@given(local=st.from_regex(r"[a-z0-9._%+-]{1,20}", fullmatch=True), domain=st.from_regex(r"[a-z]{1,10}\.(ac\.uk|org|com)", fullmatch=True))
def test_masked_email_never_scans_as_raw_email(local, domain):
    masked = privacy.mask_email(f"{local}@{domain}")
    assert masked.endswith("@" + domain)
    assert not privacy.EMAIL_RE.search(masked)


def test_keyed_hash_is_stable_per_key_and_hides_the_value():
    a = privacy.keyed_hash("Anna@School.ac.uk", "k1")
    assert a == privacy.keyed_hash(" anna@school.ac.uk", "k1")  # normalised like emails are
    assert a != privacy.keyed_hash("anna@school.ac.uk", "k2")
    assert a.startswith("h:") and len(a) == 18 and "anna" not in a


def test_mask_frame_masks_named_columns_and_stray_emails():
    df = pd.DataFrame({
        "email": ["anna.smith@school.ac.uk", None], "first_name": ["Anna Smith", "Bob"],
        "note": ["mail anna.smith@school.ac.uk", "fine"], "score": [7, 5],
    })
    out = privacy.mask_frame(df)
    assert out["email"].tolist()[0] == "a***@school.ac.uk" and pd.isna(out["email"].tolist()[1])
    assert out["first_name"].tolist() == ["A.S.", "B."]
    assert out["note"].tolist() == ["mail a***@school.ac.uk", "fine"]
    assert out["score"].tolist() == [7, 5]
    assert df["email"].iloc[0] == "anna.smith@school.ac.uk"  # the input is not modified


def test_suppress_small_hides_counts_one_to_four():
    df = pd.DataFrame({"school": list("abcdef"), "n": [0, 1, 4, 5, 12, None]})
    out = privacy.suppress_small(df, ["n"])
    assert out["n"].tolist()[:5] == [0, "<5", "<5", 5, 12]
    assert pd.isna(out["n"].iloc[5])


@pytest.mark.parametrize(
    ("value", "expected"),
    [("=SUM(A1)", "'=SUM(A1)"), ("+1", "'+1"), ("-2", "'-2"), ("@x", "'@x"), ("\tx", "'\tx"), ("\rx", "'\rx"),
     ("safe", "safe"), ("", ""), (3, 3)],
)
def test_neutralise_formula(value, expected):
    assert privacy.neutralise_formula(value) == expected


def test_collect_secrets_from_env_dotenv_and_named_list(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("SUPABASE_URL=https://proj.supabase.co\nEMPTY=\n")
    env = {"VESPA_TEST_DSN": DSN, "SUPABASE_KEY": JWT, "HOME": "/root", "MY_CRED": "hunter22hunter",
           "VESPA_SECRET_NAMES": "MY_CRED", "API_TOKEN": "abc"}
    found = privacy.collect_secrets(env, dotenv)
    assert {DSN, JWT, "S3cretPassw0rd", "https://proj.supabase.co", "hunter22hunter"} <= set(found)
    assert "/root" not in found and "abc" not in found  # not secret-named / too short to scrub safely
    assert found.index(DSN) < found.index("S3cretPassw0rd")  # longest first


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        (f"dsn {DSN}", {"known_secret", "dsn_password"}),
        ("postgres://admin:OtherPass99@db.example.org:5432/x", {"dsn_password"}),
        ("token eyJabcdefgh.eyJijklmnop.sig_part", {"jwt"}),
        ("sb_secret_0123456789abcdef", {"supabase_key"}),
        ("sb_publishable_0123456789abcdef", {"supabase_key"}),
        ("API_KEY=0123456789abcdef0123456789abcdef", {"assigned_token"}),
        ('"service_token": "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"', {"assigned_token"}),
        ("write to anna.smith@school.ac.uk", {"email"}),
        ("postgresql://u:***@localhost/db and a***@school.ac.uk", set()),
        ("sha256 0123456789abcdef0123456789abcdef0123456789abcdef", set()),
    ],
)
def test_find_detects_secret_shapes_and_emails(text, kinds):
    scrubber = privacy.Scrubber([DSN])
    assert {kind for kind, _ in scrubber.find(text)} == kinds
    assert scrubber.find(scrubber.redact(text)) == []


def test_scrub_removes_known_secrets_and_dsn_passwords():
    scrubber = privacy.Scrubber([JWT, "S3cretPassw0rd", "abc"])
    text = f"key={JWT} pw=S3cretPassw0rd dsn=postgres://x:Unknown1@h/db"
    out = scrubber.scrub(text)
    assert JWT not in out and "S3cretPassw0rd" not in out and "Unknown1" not in out
    assert "postgres://x:***@h/db" in out
    assert scrubber.secrets == [JWT, "S3cretPassw0rd"]  # too-short values are never scrubbed


def test_scan_reports_file_and_kind_and_skips_binary(tmp_path):
    (tmp_path / "a.txt").write_text("ok")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.csv").write_text("email\nzoe@example.org\n")
    (tmp_path / "c.bin").write_bytes(b"\xff\xfezoe@example.org")
    findings = privacy.Scrubber([]).scan([tmp_path])
    assert [(f.path.endswith("b.csv"), f.kind, f.hint) for f in findings] == [(True, "email", "z***@example.org")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("anna.smith@school.ac.uk", "a***@school.ac.uk"),
        ("george.obrien136@glenwoodacademy", "g***@glenwoodacademy"),  # invalid, still personal data
        ("  Bob@@school ", "B***@school"),
        ('<a href="mailto:x.y@s.org">x.y@s.org</a>', '<a href="mailto:x***@s.org">x***@s.org</a>'),
        ("not an email at all", "***"),
        ("", ""),
        (None, None),
    ],
)
def test_mask_email_field_masks_invalid_addresses_too(value, expected):
    assert privacy.mask_email_field(value) == expected


def test_mask_frame_masks_an_invalid_email_in_an_email_column():
    df = pd.DataFrame({"email": ["george.obrien136@glenwoodacademy", "a.b@school.uk"], "reason": ["invalid_email", "ok"]})
    out = privacy.mask_frame(df)
    assert "george.obrien136" not in out.to_csv() and "a.b@" not in out.to_csv()
    assert list(out["reason"]) == ["invalid_email", "ok"]


# --- masking decides by column meaning: emails and people's names only ----------------------------

@pytest.mark.parametrize("frame, column", [
    ({"version": [1], "name": ["create vespa_ops schema and tables"], "checksum": ["cd6b97f3"]}, "name"),
    ({"knack_id": ["5c2b6b95"], "name": ["Bramley Academy"]}, "name"),
    ({"establishment_name": ["Bramley Academy"], "students": [12]}, "establishment_name"),
    ({"school_name": ["Glenwood Academy"]}, "school_name"),
    ({"object": ["object_10"], "column_name": ["completion_date"], "fill_rate": [0.05]}, "column_name"),
    ({"check_name": ["rollover_ready"], "passed": [True]}, "check_name"),
    ({"table": ["students"], "column": ["year_group"], "before": ["7A"], "after": ["7B"]}, "before"),
])
def test_mask_frame_keeps_text_that_is_not_personal(frame, column):
    df = pd.DataFrame(frame)
    assert privacy.mask_frame(df)[column].tolist() == df[column].tolist()


@pytest.mark.parametrize("frame, column, expected", [
    ({"email": ["anna.smith@school.ac.uk"], "name": ["Anna Smith"]}, "name", ["A.S."]),
    ({"student_email": ["anna.smith@school.ac.uk"]}, "student_email", ["a***@school.ac.uk"]),
    ({"student_name": ["Anna Smith"], "n": [1]}, "student_name", ["A.S."]),
    ({"last_name": ["Smith-Jones"]}, "last_name", ["S.J."]),
    ({"Full Name": ["Anna Smith"]}, "Full Name", ["A.S."]),
    ({"surname": ["Smith"]}, "surname", ["S."]),
    ({"tutor_name": ["Mr Brown"]}, "tutor_name", ["M.B."]),
    ({"firstName": ["Anna"]}, "firstName", ["A."]),
])
def test_mask_frame_masks_emails_and_peoples_names(frame, column, expected):
    assert privacy.mask_frame(pd.DataFrame(frame))[column].tolist() == expected


def test_mask_frame_masks_before_and_after_of_a_personal_column_only():
    """A plan's sample of updates: the changed column's name says whether before/after are personal."""
    df = pd.DataFrame({"table": ["students", "students", "students"], "column": ["name", "email", "year_group"],
                       "before": ["Anna Smith", "anna@school.ac.uk", "12"],
                       "after": ["Anna Smith-Jones", "anna.sj@school.ac.uk", "13"]})
    out = privacy.mask_frame(df)
    assert out["before"].tolist() == ["A.S.", "a***@school.ac.uk", "12"]
    assert out["after"].tolist() == ["A.S.J.", "a***@school.ac.uk", "13"]
