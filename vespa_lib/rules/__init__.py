"""The data rules: academic years, Knack decoding, scores, the field map, statistics, rows."""
