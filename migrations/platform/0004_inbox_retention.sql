-- The retention job deletes inbox rows by age. A BRIN index finds them without scanning the
-- table: rows arrive in processed_at order, so block ranges summarise well, and it costs the
-- consumers' inserts almost nothing (a B-tree would add a write to every applied event).
CREATE INDEX inbox_processed_at ON inbox USING brin (processed_at);
