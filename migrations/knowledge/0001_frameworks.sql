-- The built-in framework corpus: shared by every tenant, readable by the
-- application role and writable by none of it. Summaries are the project's
-- own words.

CREATE TABLE knowledge.frameworks (
    framework_id        text PRIMARY KEY CHECK (framework_id ~ '^[a-z0-9-]+$'),
    name                text NOT NULL,
    author              text NOT NULL,
    summary             text NOT NULL,
    application         text NOT NULL,
    diagnostic_question text NOT NULL,
    source_url          text NOT NULL,
    -- Lower-case words and phrases whose presence in a question suggests
    -- the framework applies.
    keywords            text[] NOT NULL
);

INSERT INTO knowledge.frameworks VALUES
('technical-coherence', 'Technical Coherence', 'Jack Danger',
 'Organise engineering in three layers: product engineering ships features inside user-facing domains, domain engineering builds the shared capabilities those features stand on, and infrastructure engineering runs the commodity tooling every company needs. Team boundaries should follow the product''s architecture rather than headcount ratios.',
 'When teams collide or ownership is unclear, map each team to the layer and domain it serves; the misfits show where the org chart and the architecture disagree.',
 'If you drew your product architecture and your org chart side by side, where would the boundaries not line up?',
 'https://jackdanger.com',
 ARRAY['org design', 'org structure', 'reorg', 'reorganis', 'reorganiz', 'team structure', 'teams', 'platform team', 'ownership', 'domain', 'architecture', 'reporting line', 'split the team', 'team topology']),
('staff-archetypes', 'Staff Archetypes', 'Will Larson',
 'Staff-plus engineers tend to work in one of four shapes: the tech lead who steers one team''s technical direction, the architect who shapes direction across teams, the solver who is sent at the hardest problems, and the right hand who extends an executive''s reach. Organisations need different shapes at different times.',
 'Before promoting, hiring or defining a staff role, name which shape the organisation actually needs and check the candidate''s strengths fit it.',
 'What problem would a staff engineer solve here that nobody is solving now, and which of the four shapes does that call for?',
 'https://staffeng.com/guides/staff-archetypes',
 ARRAY['staff', 'principal', 'staff+', 'senior engineer', 'tech lead', 'architect', 'promotion', 'promote', 'ic track', 'individual contributor', 'career ladder', 'ladder']),
('trunk-and-branches', 'Trunk and Branches', 'Will Larson',
 'Shape an infrastructure organisation as a small, stable trunk that owns the core shared platform, with branches for specialised concerns such as reliability, security and developer productivity. It avoids both one overloaded central team and a scatter of disconnected ones.',
 'Use it when an infrastructure group is growing: decide what must stay in the trunk, and which concerns have enough sustained demand to become a branch.',
 'Which infrastructure work is truly shared by everyone, and which has grown distinct enough to deserve its own team?',
 'https://infraeng.dev',
 ARRAY['infrastructure', 'infra', 'platform', 'sre', 'reliability', 'security team', 'developer productivity', 'devex', 'developer experience', 'centraliz', 'centralis', 'shared services']),
('engineer-manager-pendulum', 'Engineer/Manager Pendulum', 'Charity Majors',
 'Strong technical leaders often swing between individual contribution and management over a career. Management is a change of career, not a promotion, and going back to engineering is not a demotion. Hands-on skills fade after roughly three years away and are hard to recover after five.',
 'Use it for decisions about moving into or out of management: weigh what you still want to accomplish as an engineer and how long you have been away from hands-on work.',
 'What do you still want to achieve as an engineer, and how long has it been since you did hands-on technical work?',
 'https://charity.wtf/2017/05/11/the-engineer-manager-pendulum/',
 ARRAY['become a manager', 'becoming a manager', 'management track', 'back to ic', 'go back to engineering', 'pendulum', 'career', 'people manager', 'first-time manager', 'new manager', 'ic or manager', 'manager or ic', 'burnout']),
('observability-driven-development', 'Observability-Driven Development', 'Charity Majors',
 'Decide how you will know a change is working in production before you build it. Treat "how will I know when this breaks?" as a review question as basic as tests, make service level objectives the interface between teams, and have engineers own their code in production.',
 'Use it when delivery feels slow for reasons nobody can name, incidents are found by customers, or teams argue from dashboards: start from the SLOs users would feel.',
 'When something breaks in production today, how do you find out, and how long does it take to learn why?',
 'https://charity.wtf',
 ARRAY['observability', 'monitoring', 'incident', 'outage', 'on-call', 'oncall', 'slo', 'sli', 'alert', 'debugging', 'production', 'telemetry', 'tracing', 'dashboards', 'pager']),
('engineering-strategy', 'Engineering Strategy', 'Will Larson',
 'A strategy has three parts: a diagnosis of the situation as it really is, guiding policies that respond to that diagnosis, and coherent actions that put the policies into effect. A list of projects or a vision statement is not a strategy.',
 'Use it when priorities keep shifting or teams pull in different directions: write the diagnosis first and test every policy against it.',
 'If you wrote down the diagnosis of your current situation in three sentences, would your leadership team agree with it?',
 'https://lethain.com/eng-strategies/',
 ARRAY['strategy', 'roadmap', 'priorit', 'vision', 'direction', 'planning', 'okr', 'tech debt', 'technical debt', 'migration', 'rewrite', 'build vs buy', 'velocity', 'slow']),
('systems-dynamics', 'Systems Dynamics', 'Donella Meadows',
 'Model a problem as stocks (things that accumulate, such as open bugs or hiring pipeline), flows (rates that fill or drain them) and feedback loops that amplify or dampen change. Leverage points are the few places where a small push changes the whole system; quick fixes often feed a loop that makes things worse later.',
 'Use it when a fix keeps failing or a metric keeps drifting: draw the stocks and flows and look for the loop that is actually driving the behaviour.',
 'What accumulates here, what fills and drains it, and which loop would your proposed fix strengthen?',
 'https://lethain.com/systems-thinking/',
 ARRAY['hire more', 'hiring', 'headcount', 'backlog', 'bottleneck', 'feedback loop', 'second-order', 'keeps happening', 'velocity', 'slow', 'attrition', 'turnover', 'onboarding', 'capacity']);

GRANT USAGE ON SCHEMA knowledge TO tp_app;
GRANT SELECT ON knowledge.frameworks TO tp_app;
