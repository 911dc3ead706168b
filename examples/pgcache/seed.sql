-- Seed data, loaded by setup when the users table is empty: expert 1 is user 1;
-- users 2 and 3 are patients with one past and two upcoming bookings.
INSERT INTO users (name, email) VALUES
    ('Dr. Ana Costa', 'ana@example.com'), ('Ben Patient', 'ben@example.com'), ('Cleo Patient', 'cleo@example.com');
INSERT INTO experts (user_id, headline) VALUES (1, 'Physiotherapist, sports injuries');
INSERT INTO events (expert_id, title, minutes, price_cents) VALUES
    (1, 'First consultation', 60, 9000), (1, 'Follow-up', 30, 5000);
INSERT INTO availability (expert_id, weekday, starts, ends) VALUES (1, 1, '09:00', '13:00'), (1, 3, '14:00', '18:00');
INSERT INTO bookings (event_id, user_id, starts_at, amount_cents) VALUES
    (1, 2, now() - interval '7 days', 9000), (2, 2, now() + interval '2 days', 5000), (1, 3, now() + interval '5 days', 9000);
