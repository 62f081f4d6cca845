"""Labels files: CSV or JSONL, every bad row as FILE:LINE: message."""
from rules.labels import Label, read_labels


def test_jsonl_rows_and_their_errors(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"request_id": "a", "label": "fraud", "reported_at": "2026-03-01T12:00:00+01:00", "amount": 12.5}\n'
                    "\n"
                    "not json\n"
                    '["a"]\n'
                    '{"request_id": "b", "label": "genuine", "reported_at": "yesterday"}\n'
                    '{"request_id": "c", "label": "genuine", "amount": true, "extra": 1}\n'
                    '{"label": "fraud"}\n'
                    '{"request_id": "d", "label": "genuine", "reported_at": "2026-03-01"}\n')
    labels, errors = read_labels(path)
    assert labels == {"a": Label("fraud", 1772362800.0, 12.5), "d": Label("genuine", 1772323200.0, None)}
    assert errors == [f"{path}:3: not JSON (Expecting value)",
                      f"{path}:4: not a JSON object",
                      f"{path}:5: reported_at 'yesterday' is not ISO 8601 (e.g. 2026-03-01T12:00:00Z)",
                      f"{path}:6: amount True is not a number",
                      f"{path}:7: request_id is missing or not a string"]


def test_csv_needs_its_header_columns_and_counts_quoted_lines(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("id,label\nx,fraud\n")
    assert read_labels(path) == ({}, [f"{path}:1: the header row has no request_id column"])
    path.write_text('request_id,label,note\na,fraud,"two\nlines"\nb,genuine,,extra\n\nc,maybe,\n')
    labels, errors = read_labels(path)
    assert list(labels) == ["a"]
    assert errors == [f"{path}:4: more fields than the header names",
                      f"{path}:6: label 'maybe' is not fraud or genuine"]
