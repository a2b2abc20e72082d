-- The dashboard's tables as production (Supabase) holds them, before the workbook's first migration.
-- Run by vespa_lib.sandbox.prodshape as the owner role (SET ROLE), so that role owns every table.
-- Differences from the workbook's own DDL (vespa_lib/write/schema.py), on purpose:
--   statistics are decimal(4,2) (skewness decimal(6,3), eri_score decimal(3,2)), not double precision;
--   extra columns the workbook does not know (vespa_scores.student_email, school_statistics.average,
--   national_statistics.additional_stats, establishments.trust_id, created_at on academic_years);
--   constraint names are PostgreSQL's own (unnamed in the DDL); no is_archived, no year checks on
--   scores, answers and statistics (which is what let non-canonical labels in, F11);
--   row level security enabled with Supabase-style policies.
-- The student key is added by prodshape.py: unique(email) (the legacy F2 key) or unique(email, academic_year).

CREATE TABLE establishments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    knack_id text UNIQUE NOT NULL,
    name text NOT NULL,
    is_australian boolean DEFAULT false,
    use_standard_year boolean,
    status text,
    portal_type text,
    trust_id uuid,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now()
);

CREATE TABLE students (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    knack_id text NOT NULL,
    email text NOT NULL,
    name text,
    establishment_id uuid REFERENCES establishments (id),
    year_group text,
    course text,
    faculty text,
    "group" text,
    gender text,
    academic_year text NOT NULL CHECK (academic_year ~ '^\d{4}/\d{4}$'),
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now()
);

CREATE TABLE vespa_scores (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    student_id uuid NOT NULL REFERENCES students (id) ON DELETE CASCADE,
    cycle integer NOT NULL CHECK (cycle BETWEEN 1 AND 3),
    vision integer CHECK (vision BETWEEN 0 AND 10),
    effort integer CHECK (effort BETWEEN 0 AND 10),
    systems integer CHECK (systems BETWEEN 0 AND 10),
    practice integer CHECK (practice BETWEEN 0 AND 10),
    attitude integer CHECK (attitude BETWEEN 0 AND 10),
    overall integer CHECK (overall BETWEEN 0 AND 10),
    completion_date date,
    academic_year text NOT NULL,
    student_email text,
    created_at timestamptz DEFAULT now(),
    UNIQUE (student_id, cycle, academic_year)
);

CREATE TABLE question_responses (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    student_id uuid NOT NULL REFERENCES students (id),
    cycle integer NOT NULL CHECK (cycle BETWEEN 1 AND 3),
    question_id text NOT NULL,
    response_value integer CHECK (response_value BETWEEN 1 AND 5),
    academic_year text NOT NULL,
    created_at timestamptz DEFAULT now(),
    UNIQUE (student_id, cycle, academic_year, question_id)
);

CREATE TABLE school_statistics (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    establishment_id uuid REFERENCES establishments (id),
    cycle integer,
    academic_year text NOT NULL,
    element text CHECK (element IN ('vision', 'effort', 'systems', 'practice', 'attitude', 'overall', 'ERI')),
    mean decimal(4,2),
    std_dev decimal(4,2),
    count integer,
    percentile_25 decimal(4,2),
    percentile_50 decimal(4,2),
    percentile_75 decimal(4,2),
    distribution jsonb,
    average decimal(4,2),
    calculated_at timestamptz DEFAULT now(),
    UNIQUE (establishment_id, cycle, academic_year, element)
);

CREATE TABLE national_statistics (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    cycle integer,
    academic_year text NOT NULL,
    element text CHECK (element IN ('vision', 'effort', 'systems', 'practice', 'attitude', 'overall', 'ERI')),
    mean decimal(4,2),
    std_dev decimal(4,2),
    count integer,
    percentile_25 decimal(4,2),
    percentile_50 decimal(4,2),
    percentile_75 decimal(4,2),
    distribution jsonb,
    eri_score decimal(3,2),
    min_value decimal(4,2),
    max_value decimal(4,2),
    confidence_interval_lower decimal(4,2),
    confidence_interval_upper decimal(4,2),
    skewness decimal(6,3),
    additional_stats jsonb,
    calculated_at timestamptz DEFAULT now(),
    UNIQUE (cycle, academic_year, element)
);

CREATE TABLE academic_years (
    id serial PRIMARY KEY,
    academic_year text UNIQUE NOT NULL,
    start_date date,
    end_date date,
    is_current boolean DEFAULT false,
    created_at timestamptz DEFAULT now()
);

-- Supabase: row level security on every dashboard table, read for everyone, everything for service_role.
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['establishments', 'students', 'vespa_scores', 'question_responses',
                             'school_statistics', 'national_statistics', 'academic_years'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY "Enable read access for all users" ON %I FOR SELECT USING (true)', t);
        EXECUTE format('CREATE POLICY "Service role full access" ON %I TO service_role USING (true) '
                       'WITH CHECK (true)', t);
        EXECUTE format('GRANT SELECT ON %I TO anon, authenticated', t);
        EXECUTE format('GRANT ALL ON %I TO service_role', t);
    END LOOP;
END $$;
