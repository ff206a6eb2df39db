-- What each assistant turn drew on and how it measured up to the persona.
ALTER TABLE conversation.messages
    -- Ids of the corpus frameworks the reply cites.
    ADD COLUMN cited_frameworks text[] NOT NULL DEFAULT '{}',
    -- Persona rules the reply broke (tp_coach::rules::Rule names).
    ADD COLUMN policy_violations text[] NOT NULL DEFAULT '{}',
    -- False when the knowledge service could not be reached for grounding;
    -- NULL on user turns.
    ADD COLUMN grounded boolean;
