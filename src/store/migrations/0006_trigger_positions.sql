-- How far each server's evaluation of a source has written trigger state: a server taking
-- over a trigger waits until its own view of the source is at least that far, so it never
-- compares stored keys with older rows (which would send a CLEAR and a FIRE that never were).
CREATE TABLE viewcast_trigger_positions (
    source    text   NOT NULL,
    instance  text   NOT NULL,
    position  bigint NOT NULL,
    PRIMARY KEY (source, instance)
);
