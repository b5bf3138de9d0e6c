"""Write the bundled meeting-minutes dataset: seeded, the same files every time.

    python -m tuneforge.datasets.meeting_minutes.generate [--out DIR]

Each row is one meeting: a transcript ("Name: text" lines under the meeting date)
in a user message that asks for its minutes, the minutes in the fixed structure of
``structure.py`` as the assistant message, and the meeting's ground truth under
``meta`` (speakers, decisions, action items with owner and due date) for scoring.

A meeting is built from a topic (its roles, slot values and agenda issues): small
talk, then for each issue some context, a proposal, often an objection and a
counter-proposal, a decision reached in conversation and action items assigned in
conversation (asked for, volunteered, handed to someone else, or renegotiated to a
later date), with the odd digression, a parked question and a recap. The length
aims at a drawn target, mostly 300-700 words and about one meeting in seven longer
(up to 1050), because training on a CPU costs time in proportion to length; in the
real and hard splits three meetings in ten aim at 200-299 words instead, without small
talk (about half get there: a meeting has at least one agenda issue, talked through).

The test split is held out: its seeds differ and every test meeting has a speaker
whose first name never occurs in the training split.

The bundled splits are "real" meetings (``style`` of ``make_meeting``): on top of the
above they have what ``phenomena.py`` lists (due dates said relative to the meeting,
nicknames and roles, owners named late, revised decisions, meetings that decide
nothing, absent people, interruptions, filler, speakers sharing a first name), each
recorded in the row's ``meta["phenomena"]``. The hard split has its own domains
(``hard_topics.py``), names and phrasings; the long split runs to LONG_MAX_WORDS.
``make_meeting`` without a style still makes the plain meetings other datasets build on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from . import phenomena as ph
from .hard_topics import HARD_TOPICS
from .structure import render

INSTRUCTION = "Write the minutes of this meeting."
SPLIT_SIZES = {"train": 320, "train-long": 40, "test": 50, "hard": 50, "long": 20}
# How each split's meetings are made: "real" has the phenomena of ``phenomena.py``; "hard" has them with
# the hard split's own domains, names and phrasings; "long" has them at up to LONG_MAX_WORDS. "train-long"
# is long training meetings (other seeds than "long"), kept apart from "train" so that the quickstart's CPU
# recipe, which has no time for them, trains without them (docs/quickstart.md).
SPLIT_STYLES = {"train": "real", "train-long": "long", "test": "real", "hard": "hard", "long": "long"}
STYLES = ("plain", "real", "hard", "long")
# At most 1050 words, so that every row, chat-formatted, fits in 2048 SmolLM2 tokens
# (the default --max-length): a transcript costs about 1.7 tokens a word.
MIN_WORDS, MAX_WORDS = 300, 1050
# Some real and hard meetings are short: they aim at SHORT_MIN_WORDS to MIN_WORDS - 1 words. The draw
# comes from its own generator (seeded "<seed>/short"), so every other meeting stays as it was.
SHORT_MIN_WORDS, SHORT_SHARE = 200, 0.3
# Long meetings fill SmolLM2's 8192-token context: at about 1.7 tokens a word, 4400 words and the
# minutes stay under it.
LONG_MIN_WORDS, LONG_MAX_WORDS = 1400, 4400
LONG_SHARE = 0.14  # share of meetings that aim above 700 words
MAX_EXTRAS = 6  # extra remarks per agenda issue
FIRST_DATE, LAST_DATE = dt.date(2025, 1, 6), dt.date(2026, 12, 18)

# -- people ------------------------------------------------------------------------

FIRST_NAMES = (
    "Priya", "Tom", "Ana", "Marcus", "Lena", "David", "Sofia", "Kenji", "Grace", "Omar",
    "Hannah", "Luis", "Mei", "Daniel", "Fatima", "Erik", "Chloe", "Raj", "Isabel", "Ben",
    "Nadia", "Victor", "Julia", "Samuel", "Aisha", "Paul", "Elena", "Kwame", "Laura", "Hugo",
    "Yuki", "Martin", "Clara", "Tariq", "Emma", "Diego", "Ingrid", "Noah", "Zara", "Felix",
    "Rosa", "Arjun", "Helen", "Mateo", "Leila", "Oscar", "Nina", "Ravi", "Sara", "Jonas",
    "Amara", "Kevin", "Lucia", "Ahmed", "Maya", "Peter", "Carmen", "Jin", "Olivia", "Tobias",
)
# Only in the test split, so a model cannot pass by remembering the training speakers.
HELD_OUT_FIRST_NAMES = (
    "Beatriz", "Anders", "Chiamaka", "Dmitri", "Esther", "Farid", "Gemma", "Hiroshi",
    "Ines", "Kofi", "Magnus", "Noor", "Patrice", "Svetlana",
)
LAST_NAMES = (
    "Shah", "Becker", "Costa", "Johnson", "Fischer", "Kim", "Rossi", "Tanaka", "Okoye", "Haddad",
    "Nguyen", "Garcia", "Chen", "Murphy", "Ali", "Larsen", "Dubois", "Mehta", "Alvarez", "Cohen",
    "Petrov", "Santos", "Novak", "Wright", "Mensah", "Keller", "Ibrahim", "Lindgren", "Moreno", "Walsh",
    "Sato", "Brennan", "Kowalski", "Adeyemi", "Ortiz", "Schmidt", "Yilmaz", "Hughes", "Castro", "Banerjee",
)
# People who are talked about but never speak (their first names are not in the pools above).
CANDIDATES = (
    "Jordan Ellis", "Sam Okafor", "Riley Chen", "Morgan Diaz", "Casey Novak", "Avery Brooks",
    "Jamie Lindqvist", "Drew Patel", "Quinn Moreau", "Taylor Haddad",
)

# -- topics ------------------------------------------------------------------------
#
# Each topic has titles (the TOPIC line), purposes (how the chair names the meeting),
# roles (the chair's first), slots ("a,b" draws distinct values) and issues. An issue
# has asks (a clause that fits "We need to decide ..."), facts, options and tasks.
# The first issue is the topic's main one: every meeting of the topic discusses it.
# An option has ``say`` (a verb phrase that fits "we ..."), pros and cons (whole
# sentences), the decision as the minutes write it, and its own tasks. A task is a
# verb phrase that fits "can you ...?".


def _option(say, decision, pros=(), cons=(), tasks=()):
    return {"say": say, "decision": decision, "pros": pros, "cons": cons, "tasks": tasks}


def _issue(asks, options, facts=(), tasks=()):
    return {"asks": asks, "options": options, "facts": facts, "tasks": tasks}


def _money(*amounts):
    return tuple(f"${amount:,}" for amount in amounts)


TOPICS: tuple[dict, ...] = (
    dict(
        key="product-launch",
        titles=("Launch readiness for {product}", "{product} launch planning", "Go/no-go review for the {product} launch"),
        purposes=("making sure we're ready to launch {product}", "the go/no-go for {product}", "getting the {product} launch plan locked down"),
        roles=("Product Manager", "Engineering Lead", "Marketing Manager", "Support Lead", "QA Lead", "Designer"),
        slots={
            "product": ("Atlas", "Beacon", "Orbit", "Nimbus", "Pathfinder", "Quill", "Sprout", "Tandem", "Harbor", "Lumen", "Relay", "Juniper"),
            "platform": ("the iOS app", "the web dashboard", "the Android app", "the desktop client", "the public API"),
            "pct": ("85", "90", "92", "95", "97"),
            "bugs": ("three", "four", "five", "seven", "a dozen"),
            "price_a,price_b": ("$9", "$12", "$15", "$19", "$24", "$29"),
        },
        issues=(
            _issue(
                asks=("whether we keep the launch date of {later}", "whether {later} still works as the launch date"),
                facts=(
                    "We're at {pct} percent of the test plan, with {bugs} open bugs and none of them blockers.",
                    "The release candidate for {platform} was cut yesterday.",
                    "Marketing has the announcement scheduled for the morning of {later}.",
                ),
                options=(
                    _option("keep the launch on {later}", "Keep the {product} launch date of {later}.",
                            pros=("The open bugs are all cosmetic.", "Moving it now would mean briefing the press all over again.", "Customers have been waiting for this since the beta."),
                            cons=("The payment flow still hasn't been through a full regression run.", "Support hasn't been trained on the new settings page yet."),
                            tasks=("send the final release notes to marketing", "run a full regression pass on the release candidate")),
                    _option("push the launch back by one week", "Move the {product} launch back by one week.",
                            pros=("It gives QA time to finish the regression run.", "A week costs us almost nothing, and a bad launch costs a lot."),
                            cons=("We told two of our biggest customers it would ship on {later}.", "The press embargo is already set."),
                            tasks=("tell the beta customers about the new date", "update the launch calendar with the new date")),
                    _option("do a soft launch to ten percent of users first", "Soft-launch {product} to ten percent of users before the full release.",
                            pros=("If something breaks, only a small group sees it.", "We get real usage data before the big announcement."),
                            cons=("Staged rollouts on {platform} have been flaky for us before.", "It makes the announcement a lot more complicated."),
                            tasks=("set up the feature flag for the staged rollout",)),
                ),
                tasks=("write the go/no-go checklist", "confirm the final build number with QA"),
            ),
            _issue(
                asks=("how we price {product} at launch", "what the launch pricing should be"),
                facts=("Our closest competitor charges {price_b} a month.", "In the beta survey most people said {price_a} a month felt fair."),
                options=(
                    _option("launch at {price_a} a month", "Launch {product} at {price_a} per month.",
                            pros=("That's what the beta users told us they'd pay.", "It undercuts the competition without looking cheap."),
                            cons=("That leaves very little margin once you count support costs.", "It will be hard to raise the price later."),
                            tasks=("update the pricing page to {price_a} a month",)),
                    _option("launch at {price_b} a month with a three-month discount", "Launch {product} at {price_b} per month with a three-month introductory discount.",
                            pros=("The discount gets people in and the list price protects our margin.",),
                            cons=("Discounts train people to wait for the next discount.",),
                            tasks=("set up the introductory discount code in billing",)),
                    _option("keep a free tier and charge {price_b} for the pro plan", "Offer a free tier and price the {product} pro plan at {price_b} per month.",
                            pros=("A free tier is how most of our competitors grow.",),
                            cons=("Free users will flood support.",),
                            tasks=("define the limits of the free tier",)),
                ),
                tasks=("draft the pricing FAQ for the support team",),
            ),
            _issue(
                asks=("how we staff support for launch week", "who covers support during launch week"),
                facts=("Ticket volume doubled in the week after the last launch.", "Two people on the support team are on holiday that week."),
                options=(
                    _option("bring in two temporary support agents", "Hire two temporary support agents for launch week.",
                            pros=("The agency we used last year was solid.",),
                            cons=("It takes a week to train anyone on the product.",),
                            tasks=("book two agents with the staffing agency",)),
                    _option("put engineers on a support rotation for launch week", "Put engineers on a support rotation during launch week.",
                            pros=("Nobody knows the edge cases better than the people who built it.",),
                            cons=("It slows down the bug fixes we'll need that week.", "Half the team hates talking to customers."),
                            tasks=("draw up the engineer support rotation",)),
                    _option("extend support hours to eight in the evening for two weeks", "Extend support hours to 8 pm for the first two weeks after launch.",
                            pros=("Most of the complaints last time came in after five.",),
                            cons=("Somebody has to staff those evenings.",),
                            tasks=("update the support hours on the help center",)),
                ),
                tasks=("write the launch-week macros for common questions",),
            ),
            _issue(
                asks=("how we announce {product}", "what the announcement looks like"),
                facts=("The last launch email had a forty percent open rate.",),
                options=(
                    _option("run a live demo webinar on launch day", "Announce {product} with a live demo webinar on launch day.",
                            pros=("Webinars brought in most of our leads last year.",),
                            cons=("A live demo of brand new software is asking for trouble.",),
                            tasks=("book the webinar slot and send the invites",)),
                    _option("keep it to an email and a blog post", "Announce {product} through a customer email and a blog post.",
                            pros=("It's cheap and we can schedule it ahead of time.",),
                            cons=("Nobody reads blog posts anymore.",),
                            tasks=("draft the launch blog post", "write the customer announcement email")),
                ),
            ),
        ),
    ),
    dict(
        key="budget-review",
        quarter="current",
        titles=("{quarter} budget review for the {dept} team", "Budget review of {dept} spending in {quarter}", "{quarter} {dept} budget check-in"),
        purposes=("going through the {dept} numbers for {quarter}", "the {quarter} budget review for {dept}", "where {dept} stands against the {quarter} budget"),
        roles=("Finance Director", "Department Head", "Financial Analyst", "Operations Manager", "Team Lead", "Procurement Specialist"),
        slots={
            "dept": ("marketing", "engineering", "customer support", "operations", "sales", "facilities"),
            "over": _money(12400, 18000, 22500, 31000, 40000),
            "reserve": ("5", "8", "10"),
            "tool": ("Figma", "Salesforce", "Zoom", "Jira", "Tableau", "Slack"),
            "licences": ("40", "65", "120", "200"),
            "item": ("a new 3D printer", "two replacement servers", "a company van", "new laptops for the design team", "a new forklift for the warehouse"),
            "cost": _money(14000, 27000, 36500, 48000),
        },
        issues=(
            _issue(
                asks=("what we do about being {over} over budget", "how we close the {over} gap"),
                facts=("We're {over} over plan for the quarter, mostly travel and contractors.", "Contractor spend alone came in well above forecast.", "The conference season hit harder than we expected."),
                options=(
                    _option("freeze non-essential travel until the end of the quarter", "Freeze non-essential travel until the end of {quarter}.",
                            pros=("Travel is the biggest line we actually control.", "Most of those trips could be video calls."),
                            cons=("Two customer visits are already booked and those drive renewals.", "People will just find other ways to expense it."),
                            tasks=("send the travel freeze notice to the team", "list the trips that are already booked and can't move")),
                    _option("delay the contractor renewal by a month", "Delay the contractor renewal by one month.",
                            pros=("The contractors are the second biggest cost and the project is between phases anyway.",),
                            cons=("We might lose the contractors to another client.",),
                            tasks=("tell the contracting agency about the delay",)),
                    _option("ask finance for a one-time budget increase", "Request a one-time budget increase of {over} from finance.",
                            pros=("The overspend was for work that brought in revenue.",),
                            cons=("Finance already said no to two other teams this quarter.",),
                            tasks=("write up the business case for the budget increase",)),
                ),
            ),
            _issue(
                asks=("whether we keep paying for all {licences} {tool} licences", "what we do about the {tool} licences"),
                facts=("Only about half of the {licences} {tool} seats were used last month.", "The {tool} renewal is due on {later}."),
                options=(
                    _option("cut the {tool} licences down to what we actually use", "Reduce the {tool} licences to the seats in active use.",
                            pros=("We'd save a good chunk every month for seats nobody opens.",),
                            cons=("The seats get used a lot more at quarter end.",),
                            tasks=("pull the {tool} usage report for the last ninety days", "tell the {tool} account manager about the seat reduction")),
                    _option("keep all the licences and renegotiate the price", "Keep all {licences} {tool} licences and renegotiate the renewal price.",
                            pros=("We're hiring next quarter and will need the seats anyway.",),
                            cons=("Renegotiating rarely gets more than a few percent off.",),
                            tasks=("ask the {tool} account manager for a multi-year quote",)),
                ),
            ),
            _issue(
                asks=("whether we approve the request for {item}", "whether we go ahead with {item}"),
                facts=("The quote for {item} came in at {cost}.", "We've put off {item} twice already."),
                options=(
                    _option("approve {item} this quarter", "Approve the purchase of {item} for {cost}.",
                            pros=("Putting it off again will cost us more in repairs.",),
                            cons=("It's a big one-off cost in a quarter where we're already over.",),
                            tasks=("raise the purchase order for {item}",)),
                    _option("push {item} to next quarter", "Defer the purchase of {item} to next quarter.",
                            pros=("Next quarter's budget has more room.",),
                            cons=("The quote is only valid for thirty days.",),
                            tasks=("add {item} to next quarter's budget draft",)),
                    _option("lease it instead of buying", "Lease {item} instead of buying it.",
                            pros=("Leasing spreads the cost and keeps the cash.",),
                            cons=("Over three years leasing ends up more expensive.",),
                            tasks=("get two leasing quotes for {item}",)),
                ),
            ),
            _issue(
                asks=("how big the contingency reserve should be next quarter", "whether we keep a reserve next quarter"),
                facts=("We used almost all of this quarter's reserve by week six.",),
                options=(
                    _option("hold back {reserve} percent as a reserve", "Hold back {reserve} percent of next quarter's budget as a contingency reserve.",
                            pros=("A reserve would have saved us this whole conversation.",),
                            cons=("Money in a reserve is money the teams can't plan with.",),
                            tasks=("update the forecast model with the reserve",)),
                    _option("skip the reserve and track spending weekly instead", "Skip the contingency reserve and review spending weekly.",
                            pros=("Weekly tracking catches problems before they grow.",),
                            cons=("Weekly reviews are a lot of overhead for everyone.",),
                            tasks=("set up the weekly spending report",)),
                ),
            ),
        ),
    ),
    dict(
        key="hiring",
        titles=("Hiring for the {opening} role", "{opening} hiring meeting", "{opening} hiring update"),
        purposes=("the {opening} hiring", "where we are with the {opening} role", "closing out the {opening} search"),
        roles=("Hiring Manager", "Recruiter", "HR Partner", "Team Lead", "Interview Panelist", "Department Head"),
        slots={
            "opening": ("senior backend engineer", "data analyst", "product designer", "account executive", "support team lead", "QA engineer", "DevOps engineer", "content marketer"),
            "cand_a,cand_b": CANDIDATES,
            "salary_a,salary_b": _money(82000, 95000, 110000, 125000, 140000),
        },
        issues=(
            _issue(
                asks=("which finalist gets the offer", "who gets the offer, {cand_a} or {cand_b}"),
                facts=("We have two finalists, {cand_a} and {cand_b}.", "{cand_b} has another offer and wants an answer by {soon}.", "{cand_a} did really well on the practical exercise."),
                options=(
                    _option("make the offer to {cand_a}", "Make the offer to {cand_a}.",
                            pros=("{cand_a} had the strongest technical interview.", "{cand_a}'s references were excellent."),
                            cons=("{cand_a} asked for a lot of remote flexibility.", "{cand_a} has never managed anyone."),
                            tasks=("call {cand_a} with the verbal offer", "let {cand_b} know we went another way")),
                    _option("make the offer to {cand_b}", "Make the offer to {cand_b}.",
                            pros=("{cand_b} has done this exact job before.", "{cand_b} would fit the team really well."),
                            cons=("{cand_b} was vague about why they're leaving their current job.",),
                            tasks=("call {cand_b} with the verbal offer", "let {cand_a} know we went another way")),
                    _option("bring both back for a final round with the team", "Invite {cand_a} and {cand_b} to a final round with the team.",
                            pros=("The team should have a say in who they work with.",),
                            cons=("Another round adds at least a week and we might lose both.",),
                            tasks=("schedule the final round with both finalists",)),
                ),
            ),
            _issue(
                asks=("what salary we put in the offer", "how high we go on the offer"),
                facts=("The band for this role tops out at {salary_b}.", "The candidate asked for {salary_b}."),
                options=(
                    _option("offer {salary_a} with a signing bonus", "Offer {salary_a} plus a signing bonus.",
                            pros=("A signing bonus is a one-off and keeps the band intact.",),
                            cons=("A bonus doesn't help them much in year two.",),
                            tasks=("get the signing bonus approved by HR",)),
                    _option("offer {salary_b}, the top of the band", "Offer {salary_b}, the top of the band.",
                            pros=("If we lowball, we start the whole search again.",),
                            cons=("It leaves no room for a raise next year.",),
                            tasks=("draft the offer letter at {salary_b}",)),
                    _option("offer {salary_a} with a review after six months", "Offer {salary_a} with a salary review after six months.",
                            pros=("It's fair to both sides once we've seen the work.",),
                            cons=("People hear review and assume it won't happen.",),
                            tasks=("draft the offer letter with the six-month review",)),
                ),
            ),
            _issue(
                asks=("whether we change the interview process", "how we make the interview process faster"),
                facts=("Our time to hire is about seven weeks right now.", "Two candidates dropped out during the take-home exercise last month."),
                options=(
                    _option("replace the take-home exercise with a live session", "Replace the take-home exercise with a one-hour live session.",
                            pros=("Nobody wants to spend a weekend on a take-home anymore.",),
                            cons=("Live sessions make nervous people look worse than they are.",),
                            tasks=("write the live exercise and a scoring guide",)),
                    _option("cut the process down to three rounds", "Cut the interview process to three rounds.",
                            pros=("Three rounds is plenty to decide.",),
                            cons=("We'll lose the culture interview, and that one matters.",),
                            tasks=("update the interview plan in the applicant tracking system",)),
                ),
            ),
            _issue(
                asks=("how we onboard whoever we hire", "what the new hire's first weeks look like"),
                facts=("The last new hire said the first week was mostly waiting for accounts.",),
                options=(
                    _option("assign an onboarding buddy from the team", "Assign the new hire an onboarding buddy.",
                            pros=("Buddies worked really well for the last two hires.",),
                            cons=("It's extra work on someone who is already busy.",),
                            tasks=("pick an onboarding buddy and brief them", "order a laptop for the new hire")),
                    _option("run a two-week structured onboarding plan", "Run a two-week structured onboarding plan for the new hire.",
                            pros=("A written plan means nothing depends on who happens to be around.",),
                            cons=("Someone has to write that plan first.",),
                            tasks=("write the two-week onboarding plan",)),
                ),
            ),
        ),
    ),
    dict(
        key="incident-postmortem",
        titles=("Postmortem for the {service} outage on {earlier}", "{service} incident postmortem", "Review of the {earlier} {service} incident"),
        purposes=("the postmortem for the {service} outage", "going through what happened with the {service} on {earlier}", "what we learn from the {service} incident"),
        roles=("Engineering Manager", "Site Reliability Engineer", "Backend Engineer", "Support Manager", "Product Manager", "Incident Commander"),
        slots={
            "service": ("checkout service", "login API", "search cluster", "nightly billing job", "push notification service", "reporting database"),
            "minutes": ("twenty", "forty", "forty-five", "ninety"),
            "cause": ("an expired TLS certificate", "a bad config push", "a database migration that locked a table", "a memory leak in the new release", "a full disk on the primary node"),
            "customers": ("About three hundred", "Roughly two thousand", "A handful of enterprise", "Around eight hundred"),
        },
        issues=(
            _issue(
                asks=("how we fix the root cause for good", "what the permanent fix is"),
                facts=("The {service} was down for {minutes} minutes, starting a little after two in the morning.", "The root cause was {cause}.", "It took us a while because the first alert went to an old pager rotation."),
                options=(
                    _option("add an automated check to the deploy pipeline", "Add an automated check for this failure to the deploy pipeline.",
                            pros=("A check in the pipeline catches this before it ever reaches production.",),
                            cons=("The pipeline is already slow and people will look for ways around it.",),
                            tasks=("add the pre-deploy check to the pipeline",)),
                    _option("roll back the change and rewrite it properly", "Roll back the change and rewrite it before redeploying.",
                            pros=("The change was rushed, and patching it again is how we got here.",),
                            cons=("The rollback itself is risky with the data that's already been written.",),
                            tasks=("revert the change in the {service}",)),
                    _option("write a runbook for the manual fix and revisit it next quarter", "Write a runbook for the manual fix and revisit an automated fix next quarter.",
                            pros=("It's quick, and this has happened once in three years.",),
                            cons=("Runbooks go stale and nobody reads them at two in the morning.",),
                            tasks=("write the runbook for the {service}",)),
                ),
            ),
            _issue(
                asks=("why the alerting was so slow", "how we get alerted faster next time"),
                facts=("The first alert fired eighteen minutes after the errors started.", "Nobody acknowledged the page for ten minutes."),
                options=(
                    _option("page on error rate instead of uptime checks", "Page on error rate for the {service} instead of uptime checks.",
                            pros=("Uptime checks were green the whole time because the health endpoint still answered.",),
                            cons=("Error-rate alerts get noisy, and noisy alerts get ignored.",),
                            tasks=("set up the error-rate alert for the {service}",)),
                    _option("add a secondary on-call for night hours", "Add a secondary on-call engineer for night hours.",
                            pros=("One person asleep shouldn't mean nobody responds.",),
                            cons=("The on-call load is already the top complaint in the team survey.",),
                            tasks=("update the on-call schedule with a secondary",)),
                ),
            ),
            _issue(
                asks=("what we tell customers", "how we communicate the outage"),
                facts=("{customers} customers were affected.", "Support got a bit over a hundred tickets in the first hour."),
                options=(
                    _option("publish a public incident report", "Publish a public incident report for the {service} outage.",
                            pros=("Being open about it builds more trust than hiding it.",),
                            cons=("A public report tells competitors exactly what went wrong.",),
                            tasks=("draft the public incident report",)),
                    _option("offer affected customers a service credit", "Offer affected customers a service credit.",
                            pros=("Our contracts promise it anyway for outages this long.",),
                            cons=("Credits for everyone gets expensive quickly.",),
                            tasks=("pull the list of affected accounts for the credits",)),
                    _option("email only the affected customers directly", "Email the affected customers directly instead of publishing a report.",
                            pros=("The people who noticed get a real explanation and nobody else gets worried.",),
                            cons=("It will leak anyway, and then it looks like we hid it.",),
                            tasks=("write the email to affected customers",)),
                ),
            ),
            _issue(
                asks=("whether we change how we run releases", "what changes in the release process"),
                facts=("The change went out at five on a Friday.",),
                options=(
                    _option("stop deploying on Fridays", "Stop production deploys on Fridays.",
                            pros=("Nobody wants to debug production on a Friday night.",),
                            cons=("It just moves the pile-up to Thursday.",)),
                    _option("require a second reviewer for config changes", "Require a second reviewer for config changes.",
                            pros=("A second pair of eyes would have caught this one.",),
                            cons=("Reviews slow down urgent fixes.",)),
                ),
                tasks=("announce the release policy change in the engineering channel",),
            ),
        ),
    ),
    dict(
        key="vendor-selection",
        titles=("Selecting a new {kind}", "{kind} vendor selection", "Choosing between {vendor_a} and {vendor_b} as our {kind}"),
        purposes=("picking our new {kind}", "the {kind} decision, {vendor_a} versus {vendor_b}", "choosing a {kind}"),
        roles=("Operations Director", "Procurement Manager", "Finance Analyst", "IT Manager", "Legal Counsel", "Office Manager"),
        slots={
            "kind": ("payroll provider", "cleaning contractor", "courier service", "CRM platform", "translation agency", "IT support provider", "catering company"),
            "vendor_a,vendor_b": ("Northwind", "Bluepeak", "Ardent Systems", "Cobalt and Reed", "Fernhill", "Meridian Partners", "Swiftline", "Oakridge Solutions", "Vantage Point", "Kinetic Labs"),
            "price_a,price_b": _money(4200, 5800, 6500, 7900, 9300, 11000),
            "years": ("two", "three"),
        },
        issues=(
            _issue(
                asks=("which {kind} we go with", "whether we pick {vendor_a} or {vendor_b}"),
                facts=("{vendor_a} quoted {price_a} a month and {vendor_b} quoted {price_b}.", "Both of them did a demo for us last week.", "Our contract with the current {kind} ends on {later}."),
                options=(
                    _option("go with {vendor_a}", "Select {vendor_a} as the new {kind}.",
                            pros=("{vendor_a} had the stronger references.", "Their onboarding plan was the most concrete one we saw."),
                            cons=("Their support is only available during business hours.", "They're a small company and I worry about them keeping up with us."),
                            tasks=("send {vendor_a} the signed order form", "tell {vendor_b} they weren't selected")),
                    _option("go with {vendor_b}", "Select {vendor_b} as the new {kind}.",
                            pros=("{vendor_b} already works with two companies our size.", "Their contract terms were the cleanest."),
                            cons=("Their account manager couldn't answer half of our questions.", "They want a big setup fee up front."),
                            tasks=("send {vendor_b} the signed order form", "tell {vendor_a} they weren't selected")),
                    _option("ask both of them for a best and final offer", "Ask {vendor_a} and {vendor_b} for best and final offers.",
                            pros=("They're close enough that price should decide it.",),
                            cons=("That adds two weeks and the current contract is running out.",),
                            tasks=("request best and final offers from both vendors",)),
                ),
                tasks=("check the references of the chosen vendor",),
            ),
            _issue(
                asks=("how long a contract we sign", "what contract term we agree to"),
                facts=("They're offering a discount for a {years}-year term.",),
                options=(
                    _option("sign for one year with an option to renew", "Sign a one-year contract with an option to renew.",
                            pros=("If they disappoint us, we're out in twelve months.",),
                            cons=("We give up the multi-year discount.",)),
                    _option("sign a {years}-year contract for the discount", "Sign a {years}-year contract to get the multi-year discount.",
                            pros=("The discount is real money over {years} years.",),
                            cons=("We'd be locked in if the service gets worse.",)),
                ),
                tasks=("have legal review the contract terms",),
            ),
            _issue(
                asks=("how we handle the switchover", "how we move off the current {kind}"),
                facts=("Last time we switched providers it took two months to settle down.",),
                options=(
                    _option("run both providers in parallel for a month", "Run the old and new {kind} in parallel for one month.",
                            pros=("We have a fallback if something goes wrong.",),
                            cons=("We pay twice for a month.",),
                            tasks=("write the transition plan",)),
                    _option("switch over in one go at the start of next month", "Switch to the new {kind} in one go at the start of next month.",
                            pros=("It's clean and nobody has to work with two systems.",),
                            cons=("If it goes wrong, there's no way back.",),
                            tasks=("give the current {kind} formal notice",)),
                ),
            ),
            _issue(
                asks=("whether they have to pass our security review first", "when the security review happens"),
                facts=("The last vendor took six weeks to fill in the security questionnaire.",),
                options=(
                    _option("require the security questionnaire before we sign", "Require the security questionnaire to be completed before signing.",
                            pros=("Once we've signed, we lose all leverage.",),
                            cons=("It could delay everything by a month.",)),
                    _option("sign now and run the security review in parallel", "Sign now and run the security review in parallel.",
                            pros=("We can put an exit clause in the contract if the review fails.",),
                            cons=("Legal will not love that.",)),
                ),
                tasks=("send the security questionnaire to the vendor",),
            ),
        ),
    ),
    dict(
        key="sprint-planning",
        titles=("Sprint {sprint} planning for the {team} team", "{team} team sprint planning", "Planning sprint {sprint}"),
        purposes=("planning sprint {sprint}", "what goes into sprint {sprint}", "the plan for the next two weeks"),
        roles=("Scrum Master", "Product Owner", "Tech Lead", "Frontend Developer", "Backend Developer", "QA Engineer"),
        slots={
            "team": ("payments", "mobile", "platform", "growth", "search", "integrations"),
            "feature_a,feature_b": ("the CSV export", "dark mode", "single sign-on", "the new onboarding flow", "offline sync", "the billing page redesign", "bulk editing", "two-factor login"),
            "points": ("21", "26", "30", "34", "38"),
            "velocity": ("24", "28", "31"),
            "sprint": ("14", "22", "31", "47", "58"),
        },
        issues=(
            _issue(
                asks=("what the sprint goal is", "whether we focus on {feature_a} or {feature_b}"),
                facts=("Our average velocity over the last three sprints is {velocity} points.", "The backlog has {points} points of ready stories at the top.", "Sales keeps asking about {feature_b}."),
                options=(
                    _option("make {feature_a} the sprint goal", "Make {feature_a} the goal for sprint {sprint}.",
                            pros=("{feature_a} is half done already, so we can actually finish it.",),
                            cons=("Sales will be unhappy if {feature_b} slips again.",),
                            tasks=("break {feature_a} into stories and estimate them",)),
                    _option("make {feature_b} the sprint goal", "Make {feature_b} the goal for sprint {sprint}.",
                            pros=("Three customers are blocked on {feature_b}.",),
                            cons=("We'd be starting {feature_b} from scratch.",),
                            tasks=("break {feature_b} into stories and estimate them",)),
                    _option("split the sprint between {feature_a} and {feature_b}", "Split sprint {sprint} between {feature_a} and {feature_b}.",
                            pros=("Both get moving and nobody is left waiting.",),
                            cons=("Splitting usually means finishing neither.",),
                            tasks=("write the sprint goal on the board",)),
                ),
            ),
            _issue(
                asks=("how much time goes to tech debt", "whether we do any tech debt this sprint"),
                facts=("The build takes twenty-five minutes now.", "We skipped the tech debt budget last sprint."),
                options=(
                    _option("reserve twenty percent of the sprint for tech debt", "Reserve 20 percent of the sprint for tech debt.",
                            pros=("The slow build costs all of us every single day.",),
                            cons=("Twenty percent is a lot when we're already behind.",),
                            tasks=("pick the tech debt tickets for this sprint",)),
                    _option("skip tech debt this sprint and plan a cleanup sprint next month", "Skip tech debt this sprint and plan a cleanup sprint next month.",
                            pros=("A focused cleanup sprint gets more done than bits here and there.",),
                            cons=("The cleanup sprint will get cancelled, it always does.",),
                            tasks=("put the cleanup sprint on the roadmap",)),
                ),
            ),
            _issue(
                asks=("what we do about the flaky end-to-end tests", "how we deal with the flaky test suite"),
                facts=("The end-to-end suite failed on main eleven times last week for no real reason.",),
                options=(
                    _option("quarantine the flaky tests and fix them one by one", "Quarantine the flaky end-to-end tests and fix them one at a time.",
                            pros=("The rest of the suite becomes trustworthy again right away.",),
                            cons=("Quarantined tests tend to stay quarantined forever.",),
                            tasks=("move the flaky tests into a quarantine suite",)),
                    _option("block merges until the suite is stable again", "Block merges until the end-to-end suite is stable.",
                            pros=("Nothing gets fixed until it hurts.",),
                            cons=("That could stop the whole team for days.",),
                            tasks=("find the top five flaky tests",)),
                ),
            ),
            _issue(
                asks=("what happens to the stories carried over from last sprint", "how we handle the carry-over"),
                facts=("We carried over three stories from last sprint.",),
                options=(
                    _option("carry the unfinished stories over as top priority", "Carry over last sprint's unfinished stories as top priority.",
                            pros=("They're nearly done, finishing them is cheap.",),
                            cons=("Nearly done is what we said last sprint too.",)),
                    _option("send the unfinished stories back to the backlog to re-estimate", "Return the unfinished stories to the backlog for re-estimation.",
                            pros=("The estimates were clearly wrong, so let's redo them.",),
                            cons=("Re-estimating takes a meeting of its own.",)),
                ),
                tasks=("re-estimate the carried-over stories",),
            ),
        ),
    ),
    dict(
        key="office-move",
        titles=("Planning the office move to {new_site}", "Office move to {new_site}", "Office move planning"),
        purposes=("the move to {new_site}", "planning our office move", "getting the move to {new_site} organised"),
        roles=("Office Manager", "Facilities Coordinator", "IT Manager", "HR Manager", "Finance Manager", "Team Representative"),
        slots={
            "new_site": ("the Riverside building", "the new space on Harbor Street", "the fourth floor of the Mercer building", "the old print works on Canal Road", "the Eastgate business park"),
            "movers_a,movers_b": ("Atlas Movers", "Greenline Relocation", "CityShift", "Two Brothers Moving", "Sterling Removals"),
            "headcount": ("45", "60", "80", "110"),
            "desks": ("30", "40", "55", "70"),
        },
        issues=(
            _issue(
                asks=("whether we go with assigned desks or hot desks", "how we set up the desks"),
                facts=("The new floor has room for {desks} desks and we're {headcount} people.", "On a normal day about half the company is in."),
                options=(
                    _option("go with hot desks and a booking app", "Use hot desks with a booking app in the new office.",
                            pros=("Half the desks would be empty on any given day otherwise.",),
                            cons=("People hate hunting for a desk every morning.",),
                            tasks=("trial two desk booking apps",)),
                    _option("keep assigned desks for people who come in three days or more", "Keep assigned desks for people in the office three or more days a week.",
                            pros=("The people who are here most get some stability.",),
                            cons=("It creates two classes of employees.",),
                            tasks=("survey the team about which days they come in",)),
                ),
            ),
            _issue(
                asks=("which weekend we move", "when exactly we move"),
                facts=("The lease on the current office ends on {later}.", "The last weekend of the month clashes with the quarter close."),
                options=(
                    _option("move the weekend before the lease ends", "Move the weekend before the current lease ends.",
                            pros=("We don't pay rent twice.",),
                            cons=("There's no buffer at all if the movers are late.",)),
                    _option("move two weeks early to leave a buffer", "Move two weeks before the lease ends to leave a buffer.",
                            pros=("If anything goes wrong, we still have the old office.",),
                            cons=("It means two weeks of double rent.",)),
                ),
                tasks=("confirm the moving weekend with building management",),
            ),
            _issue(
                asks=("which moving company we use", "whether we hire {movers_a} or {movers_b}"),
                facts=("{movers_a} quoted a bit higher than {movers_b} but includes packing.",),
                options=(
                    _option("hire {movers_a}", "Hire {movers_a} for the move.",
                            pros=("Packing included means nobody here spends a week packing boxes.",),
                            cons=("They're the more expensive quote.",),
                            tasks=("book {movers_a} for the moving weekend",)),
                    _option("hire {movers_b}", "Hire {movers_b} for the move.",
                            pros=("{movers_b} moved the accounting firm downstairs and they were happy.",),
                            cons=("We'd have to do all the packing ourselves.",),
                            tasks=("book {movers_b} for the moving weekend",)),
                ),
            ),
            _issue(
                asks=("how we handle IT in the new office", "what happens with the network and the servers"),
                facts=("The building has fibre, but nothing is installed on our floor yet.",),
                options=(
                    _option("have the network installed a week before the move", "Install the network in the new office a week before the move.",
                            pros=("Everyone can plug in and work on Monday morning.",),
                            cons=("The installer wants access to the floor we don't have yet.",),
                            tasks=("book the network installer",)),
                    _option("move the servers to the cloud instead of the new office", "Move the office servers to the cloud rather than to the new office.",
                            pros=("We've wanted to get rid of that server closet for years.",),
                            cons=("Doing a cloud migration and a move at the same time is a lot.",),
                            tasks=("make an inventory of the servers we run",)),
                ),
                tasks=("make an inventory of all the equipment we're moving",),
            ),
            _issue(
                asks=("what we do about parking and commuting", "how people get to the new office"),
                facts=("The new site has only twelve parking spaces.",),
                options=(
                    _option("offer a public transport subsidy", "Offer staff a public transport subsidy after the move.",
                            pros=("The new office is right next to the station.",),
                            cons=("It doesn't help the people who live out of town.",),
                            tasks=("work out the cost of the transport subsidy",)),
                    _option("rent twenty parking spaces in the garage next door", "Rent twenty parking spaces in the neighbouring garage.",
                            pros=("The people who drive have no real alternative.",),
                            cons=("Twenty spaces won't be enough and then we argue about who gets them.",),
                            tasks=("ask the garage for a quote on twenty spaces",)),
                ),
            ),
        ),
    ),
    dict(
        key="marketing-campaign",
        titles=("{campaign} campaign planning", "Planning the {campaign} marketing campaign", "{campaign} campaign kickoff"),
        purposes=("the {campaign} campaign", "planning the {campaign} push for {audience}", "getting the {campaign} campaign off the ground"),
        roles=("Marketing Director", "Content Lead", "Performance Marketer", "Brand Designer", "Sales Manager", "Social Media Manager"),
        slots={
            "campaign": ("Spring Refresh", "Back to School", "Summer Savings", "Year in Review", "Holiday Gift Guide", "Small Business Week"),
            "budget": _money(25000, 40000, 60000, 75000),
            "audience": ("small business owners", "IT managers", "parents", "students", "first-time buyers"),
            "cpa": ("$18", "$32", "$45"),
        },
        issues=(
            _issue(
                asks=("where we spend the {budget}", "what the channel mix looks like"),
                facts=("Paid social brought in leads at about {cpa} each last quarter.", "Email is still our best converting channel.", "The total budget for {campaign} is {budget}."),
                options=(
                    _option("put most of the budget into paid social", "Put most of the {budget} budget into paid social.",
                            pros=("That's where {audience} actually spend their time.",),
                            cons=("Paid social costs went up a lot this year.",),
                            tasks=("book the paid social placements",)),
                    _option("split the budget evenly between podcasts and paid search", "Split the budget evenly between podcast ads and paid search.",
                            pros=("Podcast listeners convert really well for us.",),
                            cons=("Podcast results are almost impossible to track.",),
                            tasks=("shortlist three podcasts for the ads",)),
                    _option("focus on email and partner newsletters", "Focus the campaign on email and partner newsletters.",
                            pros=("It's the cheapest channel and our list is in good shape.",),
                            cons=("We only reach people who already know us.",),
                            tasks=("ask two partners about newsletter slots",)),
                ),
                tasks=("set up tracking links for every channel",),
            ),
            _issue(
                asks=("what creative direction we take", "what the ads should look like"),
                facts=("The agency sent two creative directions on {earlier}.",),
                options=(
                    _option("use customer stories instead of product shots", "Use customer stories as the creative for {campaign}.",
                            pros=("Real customers are more convincing than anything we write.",),
                            cons=("Getting customers approved takes forever.",),
                            tasks=("line up three customers for the stories",)),
                    _option("go with the bold illustrated style from the mockups", "Use the illustrated style from the design mockups.",
                            pros=("It stands out in a feed full of stock photos.",),
                            cons=("It doesn't look like anything else we've done.",),
                            tasks=("finish the illustrated ad set",)),
                ),
            ),
            _issue(
                asks=("when the campaign goes live", "whether we launch on {soon} or wait"),
                facts=("The competitor's campaign starts on {later}.",),
                options=(
                    _option("launch on {soon}", "Launch the {campaign} campaign on {soon}.",
                            pros=("We get in before the competitor does.",),
                            cons=("The new landing page won't be ready by then.",)),
                    _option("wait until {later} when the new landing page is ready", "Launch the campaign on {later}, once the new landing page is ready.",
                            pros=("Sending traffic to the old page wastes the budget.",),
                            cons=("We'd launch the same week as the competitor.",)),
                ),
                tasks=("brief the agency on the launch date",),
            ),
            _issue(
                asks=("how we measure success", "what target we set"),
                facts=("Last campaign we only looked at clicks, and that told us nothing.",),
                options=(
                    _option("target a cost per lead under {cpa}", "Target a cost per lead below {cpa}.",
                            pros=("Cost per lead is easy to track every day.",),
                            cons=("Cheap leads aren't necessarily good leads.",)),
                    _option("measure on booked demos rather than leads", "Measure the campaign on booked demos, not leads.",
                            pros=("Demos are what sales actually cares about.",),
                            cons=("Demos lag by weeks, so we can't adjust quickly.",)),
                ),
                tasks=("build the campaign dashboard",),
            ),
        ),
    ),
    dict(
        key="compliance-audit",
        titles=("{standard} audit preparation", "Preparing for the {standard} audit with {auditor}", "{standard} readiness review"),
        purposes=("getting ready for the {standard} audit", "the findings from the {standard} readiness check", "what we still need before {auditor} arrives"),
        roles=("Compliance Manager", "Security Engineer", "IT Director", "HR Manager", "Legal Counsel", "Internal Auditor"),
        slots={
            "standard": ("SOC 2", "ISO 27001", "PCI DSS", "HIPAA", "GDPR"),
            "findings": ("three", "five", "seven", "nine"),
            "auditor": ("Harlow and Finch", "Crestline Assurance", "Bramley Audit Group", "Northgate Compliance"),
        },
        issues=(
            _issue(
                asks=("how we fix the access review findings", "what we do about the stale accounts"),
                facts=("The readiness check found {findings} issues, most of them about access reviews.", "There are still active accounts for people who left in the spring.", "Fieldwork with {auditor} starts on {later}."),
                options=(
                    _option("do a full access review before fieldwork starts", "Complete a full access review before fieldwork starts.",
                            pros=("It's the finding the auditors will look at first.",),
                            cons=("A full review of every system is weeks of work.",),
                            tasks=("export the current access list for every system",)),
                    _option("automate offboarding through the HR system", "Automate account offboarding through the HR system.",
                            pros=("It fixes the cause, not just this year's symptoms.",),
                            cons=("It won't be done before the auditors arrive.",),
                            tasks=("scope the offboarding automation with IT",)),
                ),
                tasks=("remove the accounts of former employees",),
            ),
            _issue(
                asks=("what we do about the out-of-date policies", "how we get the policy documents current"),
                facts=("The incident response policy was last updated two years ago.",),
                options=(
                    _option("rewrite the policies in house", "Rewrite the outdated policies in house.",
                            pros=("Nobody knows how we actually work better than we do.",),
                            cons=("We've been saying we'd do that for a year.",),
                            tasks=("update the incident response policy",)),
                    _option("buy a policy template pack and adapt it", "Buy a policy template pack and adapt it.",
                            pros=("The templates already map to every control.",),
                            cons=("Auditors can tell when a policy is a template nobody follows.",),
                            tasks=("compare two policy template packs",)),
                ),
                tasks=("get the updated policies signed off by leadership",),
            ),
            _issue(
                asks=("how we handle the vendor risk assessments", "which vendors need a risk assessment"),
                facts=("Eleven vendors have never had a risk assessment.",),
                options=(
                    _option("assess only the vendors that touch customer data", "Run risk assessments only for vendors that handle customer data.",
                            pros=("That's what the standard actually asks for.",),
                            cons=("We don't have a reliable list of which vendors touch customer data.",)),
                    _option("assess every vendor this year", "Run risk assessments for every vendor this year.",
                            pros=("Then we never have this conversation again.",),
                            cons=("Most of those vendors are a coffee subscription and a sign printer.",)),
                ),
                tasks=("send the security questionnaire to the top ten vendors",),
            ),
            _issue(
                asks=("how we collect the evidence", "whether we buy a tool for evidence collection"),
                facts=("Last year evidence collection took three people a month.",),
                options=(
                    _option("buy a compliance automation tool", "Buy a compliance automation tool for evidence collection.",
                            pros=("It pulls most of the evidence automatically.",),
                            cons=("Those tools are expensive and take months to set up.",),
                            tasks=("book demos with two compliance tool vendors",)),
                    _option("keep the evidence in the shared drive with a clear folder structure", "Keep evidence in the shared drive with a new folder structure.",
                            pros=("It costs nothing and everyone knows how to use it.",),
                            cons=("That's exactly what turned into a mess last year.",),
                            tasks=("set up the evidence folder structure",)),
                ),
            ),
        ),
    ),
    dict(
        key="customer-escalation",
        titles=("Escalation from {customer}", "{customer} customer escalation", "Response plan for {customer}"),
        purposes=("the escalation from {customer}", "what we do about {customer}", "getting {customer} back on track"),
        roles=("Customer Success Manager", "Account Executive", "Support Engineer", "Engineering Manager", "Head of Customer Success", "Product Manager"),
        slots={
            "customer": ("Halvorsen Foods", "Brightwater Clinics", "Mosaic Retail", "Kestrel Air", "Pinecrest Schools", "Ironbridge Logistics", "Solstice Hotels"),
            "problem": ("their invoices have been wrong for two months", "their data sync has been failing every night", "their users keep getting logged out", "their reports take minutes to load", "they lost a day of order data"),
            "arr": _money(80000, 150000, 240000, 400000),
            "credit": ("10", "15", "20", "25"),
        },
        issues=(
            _issue(
                asks=("how we make this right for {customer}", "what we offer {customer}"),
                facts=("{customer} is worth about {arr} a year to us.", "Their COO emailed our CEO directly on {earlier}.", "The short version is that {problem}."),
                options=(
                    _option("offer a {credit} percent credit on the next invoice", "Offer {customer} a {credit} percent credit on their next invoice.",
                            pros=("A credit shows we take it seriously.",),
                            cons=("Money doesn't fix the actual problem.",),
                            tasks=("get the {credit} percent credit approved by finance",)),
                    _option("give them a dedicated support engineer for a month", "Assign {customer} a dedicated support engineer for one month.",
                            pros=("They want someone who knows their setup, not a new agent every time.",),
                            cons=("We don't have an engineer to spare for a month.",),
                            tasks=("pick the support engineer for {customer}",)),
                    _option("offer them a free year of premium support", "Give {customer} a free year of premium support.",
                            pros=("It costs us little and they'll feel the difference.",),
                            cons=("Every other unhappy customer will ask for the same.",),
                            tasks=("prepare the premium support upgrade for {customer}",)),
                ),
            ),
            _issue(
                asks=("when we can ship a fix", "what the timeline for the fix is"),
                facts=("Engineering has reproduced it.", "It's the same bug another customer reported last quarter."),
                options=(
                    _option("ship a hotfix this week", "Ship a hotfix for the {customer} problem this week.",
                            pros=("Every day it stays broken makes the renewal harder.",),
                            cons=("Hotfixes skip half of our testing.",),
                            tasks=("ship the hotfix and confirm it with {customer}",)),
                    _option("include the fix in the next regular release", "Include the fix in the next regular release.",
                            pros=("The release is close anyway, and it goes through full testing.",),
                            cons=("They'll hear next release as never.",),
                            tasks=("tell {customer} which release the fix is in",)),
                ),
            ),
            _issue(
                asks=("who talks to {customer} and how often", "how we communicate with {customer}"),
                facts=("They said they feel nobody tells them anything.",),
                options=(
                    _option("set up a call between their COO and our VP this week", "Set up an executive call with {customer} this week.",
                            pros=("Their COO escalated, so they want to hear from someone senior.",),
                            cons=("An exec call with nothing new to say makes it worse.",),
                            tasks=("set up the call with their COO",)),
                    _option("send them a written update every two days", "Send {customer} a written status update every two days.",
                            pros=("A regular rhythm is what they're missing.",),
                            cons=("Written updates can sound like a form letter.",),
                            tasks=("send the first written status update to {customer}",)),
                ),
            ),
            _issue(
                asks=("whether {customer} is a renewal risk", "what we do about the {customer} renewal"),
                facts=("Their renewal is on {later}.",),
                options=(
                    _option("write a recovery plan before the renewal", "Write a recovery plan for the {customer} account before renewal.",
                            pros=("We need to show them we've changed something, not just say it.",),
                            cons=("A plan on paper won't impress them.",)),
                    _option("offer an early renewal at a discount", "Offer {customer} an early renewal at a discount.",
                            pros=("It locks them in while we fix things.",),
                            cons=("Offering a discount now looks like we're buying them off.",)),
                ),
                tasks=("write the account recovery plan",),
            ),
        ),
    ),
    dict(
        key="quarterly-planning",
        quarter="next",
        titles=("{quarter} objectives for the {team} team", "{quarter} planning for {team}", "Setting the {quarter} goals"),
        purposes=("setting the objectives for {quarter}", "planning {quarter}", "what we commit to for {quarter}"),
        roles=("Head of Product", "Engineering Director", "Data Analyst", "Product Manager", "Design Lead", "Customer Success Lead"),
        slots={
            "team": ("payments", "mobile", "platform", "growth", "search", "integrations"),
            "metric": ("weekly active users", "net revenue retention", "trial-to-paid conversion", "time to first response", "customer churn"),
            "target": ("10", "15", "20", "25"),
        },
        issues=(
            _issue(
                asks=("what our main objective is for {quarter}", "what the headline objective should be"),
                facts=("Last quarter we hit two of our four key results.", "Our {metric} went the wrong way last quarter."),
                options=(
                    _option("make {metric} the headline objective", "Make improving {metric} the main objective for {quarter}.",
                            pros=("It's the number the board keeps asking about.",),
                            cons=("It's not fully in our control.",)),
                    _option("focus on reliability instead of new features", "Focus {quarter} on reliability rather than new features.",
                            pros=("The outages last quarter cost us more than any feature would earn.",),
                            cons=("Sales will say we've stopped shipping.",)),
                ),
                tasks=("draft the {quarter} objectives document",),
            ),
            _issue(
                asks=("how ambitious the target should be", "what target we put on it"),
                facts=("Last year's targets were mostly missed by a mile.",),
                options=(
                    _option("aim for a {target} percent improvement", "Set a target of a {target} percent improvement in {metric}.",
                            pros=("It's a stretch, but it's what moves the needle.",),
                            cons=("If we miss it again, people stop taking the targets seriously.",)),
                    _option("set a lower target we're sure to hit", "Set a conservative target for {metric}.",
                            pros=("Hitting a target is good for the team's morale.",),
                            cons=("A safe target doesn't change anything.",)),
                ),
                tasks=("build the baseline for {metric}",),
            ),
            _issue(
                asks=("what we stop doing to make room", "what we drop this quarter"),
                facts=("We have more commitments than people right now.",),
                options=(
                    _option("pause work on the partner integrations", "Pause the partner integrations for {quarter}.",
                            pros=("Only two partners actually use them.",),
                            cons=("One of those two partners is our biggest reseller.",),
                            tasks=("tell the partners about the pause",)),
                    _option("replace the weekly status report with a dashboard", "Replace the weekly status report with a dashboard.",
                            pros=("The report takes half a day every week and nobody reads it.",),
                            cons=("A dashboard doesn't explain anything.",),
                            tasks=("set up the status dashboard",)),
                ),
            ),
        ),
    ),
    dict(
        key="website-redesign",
        titles=("Website redesign review", "Website redesign with {agency}", "New website: design and launch"),
        purposes=("the website redesign", "where we are with {agency} on the new website", "the new site"),
        roles=("Marketing Director", "Web Developer", "UX Designer", "Content Strategist", "SEO Specialist", "Product Marketing Manager"),
        slots={
            "agency": ("Pixel and Pine", "Studio Marlow", "Brightside Digital", "Fathom Design"),
            "pages": ("forty", "sixty", "a hundred and twenty"),
        },
        issues=(
            _issue(
                asks=("which homepage design we pick", "which of the homepage concepts we go with"),
                facts=("{agency} sent three homepage concepts on {earlier}.", "In the user test, people found the pricing fastest on the second concept."),
                options=(
                    _option("go with the second concept", "Go with the second homepage concept.",
                            pros=("It tested best, and that's the whole point of testing.",),
                            cons=("It looks a lot like our competitor's homepage.",)),
                    _option("combine the first concept's layout with the navigation from the second", "Combine the first concept's layout with the second concept's navigation.",
                            pros=("We keep the look people liked and the navigation that worked.",),
                            cons=("Frankendesigns never look as good as either original.",)),
                ),
                tasks=("send {agency} the consolidated feedback",),
            ),
            _issue(
                asks=("what we do with the old pages", "how much of the old content we keep"),
                facts=("We have {pages} pages on the current site and a third of them get no traffic.",),
                options=(
                    _option("delete the pages with no traffic and set up redirects", "Remove pages without traffic and redirect them.",
                            pros=("Less content means less to maintain.",),
                            cons=("Some of those pages still rank for useful searches.",),
                            tasks=("make the redirect map",)),
                    _option("migrate everything and clean up after launch", "Migrate all pages and clean up after launch.",
                            pros=("Nothing breaks on launch day.",),
                            cons=("After launch is when nobody has time.",),
                            tasks=("export the page traffic report",)),
                ),
            ),
            _issue(
                asks=("when the new site goes live", "what the launch date for the new site is"),
                facts=("{agency} says the build will be done by {soon}.",),
                options=(
                    _option("launch the whole site on {later}", "Launch the new website on {later}.",
                            pros=("One launch, one announcement.",),
                            cons=("That leaves very little time for testing.",)),
                    _option("launch the blog section first and the rest a month later", "Launch the blog section first and the rest of the site a month later.",
                            pros=("The blog is the least risky part to test in production.",),
                            cons=("Two launches means two rounds of everything.",)),
                ),
                tasks=("write the launch checklist for the site",),
            ),
        ),
    ),
    dict(
        key="team-offsite",
        titles=("Team offsite planning", "Planning the offsite at {place}", "Offsite logistics and agenda"),
        purposes=("planning the offsite", "the offsite plans", "getting the offsite sorted"),
        roles=("Chief of Staff", "Office Manager", "Team Lead", "People Partner", "Finance Manager", "Engineer"),
        slots={
            "place": ("a lodge near the lake", "a hotel in Lisbon", "a farmhouse in the hills", "a conference center in Denver", "a co-working space in Barcelona"),
            "budget_pp": _money(600, 850, 1200),
            "days": ("two", "three"),
        },
        issues=(
            _issue(
                asks=("where we go", "whether we book {place}"),
                facts=("The shortlist is down to {place} and somewhere closer to home.", "The budget is about {budget_pp} per person."),
                options=(
                    _option("book {place}", "Book {place} for the offsite.",
                            pros=("Getting away properly is the point of an offsite.",),
                            cons=("Travel eats most of the budget.",),
                            tasks=("get a final quote from the venue",)),
                    _option("keep it local and spend the savings on activities", "Hold the offsite locally and spend the savings on activities.",
                            pros=("Nobody loses a day to travel.",),
                            cons=("Local means people pop back to the office.",),
                            tasks=("shortlist three local venues",)),
                ),
                tasks=("send a save-the-date to the team",),
            ),
            _issue(
                asks=("how long the offsite is", "how many days we take"),
                facts=("Some people have childcare to sort out for anything overnight.",),
                options=(
                    _option("do {days} days including travel", "Make the offsite {days} days including travel.",
                            pros=("Anything shorter and we spend it all on logistics.",),
                            cons=("That's a lot to ask of people with kids.",)),
                    _option("hold it midweek so weekends stay free", "Hold the offsite midweek so weekends stay free.",
                            pros=("Nobody gives up their weekend for work.",),
                            cons=("Customers will notice if the whole team is away midweek.",)),
                ),
            ),
            _issue(
                asks=("what we actually do there", "what the agenda looks like"),
                facts=("Last year's agenda was back-to-back presentations.",),
                options=(
                    _option("split it between strategy sessions and team activities", "Split the agenda between strategy sessions and team activities.",
                            pros=("People remember the activities more than the slides.",),
                            cons=("It's a lot of money for activities.",),
                            tasks=("draft the offsite agenda",)),
                    _option("bring in an outside facilitator", "Hire an outside facilitator for the strategy sessions.",
                            pros=("A neutral person gets the quiet people talking.",),
                            cons=("Facilitators cost a fortune for two days.",),
                            tasks=("get quotes from two facilitators",)),
                ),
                tasks=("collect topics for the strategy sessions",),
            ),
        ),
    ),
    dict(
        key="data-migration",
        titles=("Migration from {old_sys} to {new_sys}", "Data migration planning", "Moving our data to {new_sys}"),
        purposes=("the migration off {old_sys}", "moving our data to {new_sys}", "the plan for the {new_sys} migration"),
        roles=("Data Engineering Lead", "Database Administrator", "Project Manager", "Data Analyst", "Security Engineer", "Application Developer"),
        slots={
            "old_sys": ("the old Oracle database", "the legacy CRM", "our on-premise file server", "the old data warehouse"),
            "new_sys": ("Postgres", "the new CRM", "cloud storage", "Snowflake", "BigQuery"),
            "records": ("two million", "forty million", "three hundred thousand", "about nine million"),
        },
        issues=(
            _issue(
                asks=("how we cut over", "whether we do it in one go or in phases"),
                facts=("We have {records} records to move.", "The test migration took eleven hours."),
                options=(
                    _option("do a phased migration, one system at a time", "Migrate in phases, one system at a time.",
                            pros=("If something breaks, only one system is affected.",),
                            cons=("We'd run two systems side by side for months.",)),
                    _option("do a single cutover over a weekend", "Do a single cutover over one weekend.",
                            pros=("One weekend of pain and then it's done.",),
                            cons=("If it fails halfway, Monday is a disaster.",)),
                ),
                tasks=("write the cutover plan",),
            ),
            _issue(
                asks=("how we check the data afterwards", "how we validate the migrated data"),
                facts=("The test run found about two hundred records with mismatched dates.",),
                options=(
                    _option("compare row counts and checksums for every table", "Validate every table with row counts and checksums.",
                            pros=("It's automatic and it covers everything.",),
                            cons=("Checksums won't catch a date stored in the wrong time zone.",),
                            tasks=("write the validation scripts",)),
                    _option("check a sample of records by hand in every table", "Validate by hand-checking a sample of records in every table.",
                            pros=("A person spots the weird stuff a script misses.",),
                            cons=("It doesn't scale to {records} records.",),
                            tasks=("pick the sample records for each table",)),
                ),
                tasks=("fix the records with mismatched dates",),
            ),
            _issue(
                asks=("when we switch off {old_sys}", "how long we keep {old_sys} running"),
                facts=("The support contract for {old_sys} renews on {later}.",),
                options=(
                    _option("keep {old_sys} read-only for three months", "Keep {old_sys} read-only for three months after the migration.",
                            pros=("People will need to look things up for a while.",),
                            cons=("Three months means paying for another support term.",)),
                    _option("switch it off a month after cutover", "Switch off {old_sys} one month after cutover.",
                            pros=("If we keep it around, people keep using it.",),
                            cons=("Someone will need an old record the week after we switch it off.",)),
                ),
                tasks=("tell the users of {old_sys} about the switch-off date",),
            ),
        ),
    ),
)

# -- the conversational glue -------------------------------------------------------

GENERIC_PROS = (
    "It's the simplest option on the table.",
    "It keeps the risk low.",
    "It's what worked last time we were in this spot.",
    "The team asked for exactly this.",
    "It's the option we can actually start on tomorrow.",
)
GENERIC_CONS = (
    "I'm not sure we have the people for it right now.",
    "It'll take longer than we think, it always does.",
    "It's more expensive than it looks once you add everything up.",
    "We tried something like that before and it didn't stick.",
    "It mostly pushes the problem down the road.",
)
SMALL_TALK = (
    ("How was everyone's weekend?", "Good, thanks. Too short, as usual.", "We finally went hiking. My legs still hurt."),
    ("Can everyone hear me okay?", "Loud and clear.", "Yes, you're fine."),
    ("Sorry I'm a minute late, the last meeting ran over.", "No problem, we haven't started."),
    ("How's the new apartment, {f1}?", "Still living out of boxes, but I love it."),
    ("Is it raining where you are too?", "Pouring. I got soaked on the way in.", "It's sunny here, sorry."),
    ("{f1}, how was the vacation?", "Amazing. I'm still on island time, so be patient with me."),
    ("Did everyone get coffee? This might take a while.", "Second cup already.", "Same."),
    ("Happy {weekday}, everyone.", "Is it? It feels like it should be later in the week."),
    ("Congrats on the promotion, {f1}!", "Thanks! Still getting used to it."),
    ("Let's give it one more minute for people to join.", "I think {f2} said they'd be a bit late.", "I'm here, I'm here. Sorry."),
    ("{f1}, did your team win on Saturday?", "We lost, but only by one goal. Moral victory."),
    ("Has anyone else's laptop been restarting for updates all morning?", "Mine did it twice during a call.", "IT says it's the last one. Apparently."),
)
DIGRESSIONS = (
    ("Did anyone else get the email about the fire drill on Thursday?", "Yes, at eleven. Perfect timing as always.", "At least it's not raining this time."),
    ("Random question, but is the coffee machine on the third floor fixed yet?", "Facilities said next week.", "They said that last week."),
    ("Is anyone going to the quiz night on Friday?", "Maybe. Our team came last time, so we have a reputation to fix.", "Count me in."),
    ("Sorry, my dog is barking, give me a second.", "No worries, we can all hear a very enthusiastic dog.", "Okay, he's outside now. Sorry about that."),
    ("Has anyone tried the new ramen place around the corner?", "Yes, it's great, but the line at noon is ridiculous.", "Go at eleven thirty. Trust me."),
    ("Quick thing, the parking garage is closed on Monday for repainting.", "Again?", "Apparently the first coat was the wrong grey."),
    ("Did you see the game last night?", "Don't. I'm still upset.", "Let's not reopen old wounds in a work meeting."),
    ("Sorry, I'm getting a lot of echo. Can everyone who isn't talking mute?", "Better?", "Much better, thanks."),
    ("By the way, it's {f2}'s birthday on Friday, so there's cake at three.", "Oh no, you weren't supposed to tell anyone.", "Too late. I'm bringing candles."),
    ("Is it just me or is it freezing in here?", "It's not just you. The thermostat is locked.", "I'm bringing a blanket next time."),
    ("Has anyone used the new expense tool yet?", "Once. It rejected my receipt for being blurry. It wasn't.", "Mine worked fine, for what it's worth."),
    ("Before I forget, the all-hands moved to Thursday.", "Same time?", "Same time, different room."),
    ("Who keeps leaving the whiteboard full in this room?", "Guilty. I'll clean it after.", "Leave the drawing of the cat, though."),
)
BACK_ON_TRACK = ("Okay, let's get back on track.", "Anyway, back to it.", "Right, where were we?", "Okay, focus, people.")
OPENERS = ("Okay, let's get started.", "Alright, let's dive in.", "Okay, I think we're all here.", "Let's kick off.", "Alright, thanks for making the time.")
PURPOSE_LINES = ("Today is about {purpose}.", "The main thing today is {purpose}.", "We're here for {purpose}.", "On the agenda today: {purpose}.")
FIRST_TRANSITIONS = ("First, we need to decide {ask}.", "Let's start with {ask}.", "First question is {ask}.", "The first thing to settle is {ask}.")
TRANSITIONS = ("Next, we need to decide {ask}.", "Okay, next question is {ask}.", "Then we have to figure out {ask}.", "Moving on. We still need to decide {ask}.", "Next up: {ask}.")
FACT_LEADS = ("", "", "Some context: ", "Just so everyone knows, ", "For what it's worth, ", "Quick update first. ")  # a lead ending in ", " or ": " takes the fact as a clause
PROPOSALS = ("I think we should {say}.", "My vote is to {say}.", "Honestly, I'd {say}.", "What if we {say}?", "I'd like to propose we {say}.", "Can I suggest we {say}?")
OBJECTIONS = ("I'm not sure about that. {con}", "Hmm, I'd push back a bit. {con}", "Devil's advocate: {con_clause}.", "I hear you, but {con_clause}.", "My worry is that {con_clause}.")
BARE_OBJECTIONS = ("I'm not sure about that.", "Hmm, I'd push back a bit.", "I'm not convinced, to be honest.")
COUNTERS = ("What if we {say} instead?", "Couldn't we just {say}?", "I'd rather {say}.", "Alternatively, we could {say}.")
REPLIES = ("Fair point.", "That's true, but {pro_clause}.", "I get that, but I still think it's the better bet.", "Okay, that's a real concern.", "Maybe, but {pro_clause}.")
NEUTRAL_VOICES = ("I'm kind of in the middle on this, honestly.", "For what it's worth, I'm with {first}.", "I can see both sides.", "I don't have a strong view either way.")
# Remarks for or against an option; the short ones only once the option has come up.
POINTS_FOR = ("To be fair to the idea to {say}, {pro_clause}.", "The case for the plan to {say} is that {pro_clause}.")
SHORT_POINTS_FOR = ("Can I add something? {pro}", "{pro}", "Also, {pro_clause}.", "And remember, {pro_clause}.")
POINTS_AGAINST = ("My concern with the plan to {say} is that {con_clause}.", "The trouble with the plan to {say} is that {con_clause}.")
SHORT_POINTS_AGAINST = ("{con}", "Still, {con_clause}.", "Just to say it out loud: {con_clause}.")
AGREEMENTS = ("Agreed.", "Works for me.", "Yeah, makes sense.", "Fine by me.", "No objections here.", "I'm on board.", "Sounds good.", "Yep.", "Same, let's do it.")
GRUDGING = ("I'm still not thrilled, but okay.", "Fine, as long as we revisit it if it goes badly.", "Okay. For the record, I'd have gone the other way.", "I'll disagree and commit.")
CHAIR_DECISIONS = (
    "Okay, I think we've heard enough. Let's {say}.",
    "So we {say}. Everyone okay with that?",
    "Alright, decision: we {say}.",
    "I'm going to make the call: we {say}.",
    "Sounds like we have consensus to {say}.",
    "Okay, then we {say}.",
)
SETTLE_REQUESTS = ("Can we just agree to {say}?", "Should we settle on that and {say}?")
SETTLE_ANSWERS = ("Yes, let's do that.", "Agreed, that's the decision.", "Yes. Decided.")
QUICK_DECISIONS = ("Great, so that's decided: we {say}.", "Easy one. We {say}.", "Okay, nobody's against it, so we {say}.")
ASKS = (
    "{first}, can you {do} {by_when}?",
    "{first}, could you {do}? Ideally {by_when}.",
    "Who can {do}? {first}, would you mind, {by_when}?",
    "{first}, I'd like you to {do}, {by_when} if possible.",
)
ASK_REPLIES = ("Sure, {short} works.", "Yes, I'll have it done by {short}.", "Will do.", "Yep, no problem.", "Okay, I can do that.")
VOLUNTEERS = (
    "I can {do}. I'll have it done {by_when}.",
    "I'll take that one. I'll {do} {by_when}.",
    "Let me {do}. Give me until {wd_md}.",
    "I'm happy to {do}, {by_when}.",
)
VOLUNTEER_THANKS = ("Perfect, thanks {first}.", "Great, thank you.", "Thanks, that's a big help.")
EXCUSES = (
    "I'm out from {out_date} for a week, so I can't.",
    "I'm swamped with the quarter close, honestly.",
    "I'd rather not, I'm already on three other things.",
    "I'm at a conference most of next week.",
)
HANDOVERS = ("Could {first} take it?", "Maybe {first} can?", "{first} knows that area better than me anyway.")
TAKE_OVERS = ("Sure, I can do it. Is {wd_md} okay?", "Yes, I'll take it. {by_when_cap} work?")
TAKE_OVER_CONFIRMS = ("{short_cap} is fine.", "Yes, {short} works. Thanks {first}.")
RENEGOTIATIONS = ("{short_cap} is tight. Could we say {wd_md}?", "Can I have until {wd_md}? I need the numbers first.", "That's too soon. {wd_md} would be realistic.")
RENEGOTIATION_ACCEPTS = ("Okay, {wd_md} it is.", "Fine, {short} then.", "That's okay, {short} works.")
PEER_SUGGESTIONS = ("Maybe {first} should {do}? You know it best.", "{first}, you'd be the natural person to {do}.")
PEER_ACCEPTS = ("Yeah, fair enough. I'll do it {by_when}.", "Okay, I'll {do} {by_when}.")
PARKED = (
    "There's also the question of {ask}, but let's park that until we have more information.",
    "I wanted to get to {ask} too, but we're out of time. Next meeting.",
)
PARKED_REPLIES = ("Agreed, it needs more thought.", "Fine by me.", "Can we make sure it's first on the list next time?")
RECAP_LEADS = ("Let me run through the action items.", "Quick recap of who's doing what.", "Before we go, the action items.")
CLOSINGS = ("I think that's everything. Thanks, everyone.", "Great, that's all I had. Thanks, all.", "Okay, we're done. Thanks for the good discussion.", "Let's wrap there. Thanks, everyone.")
GOODBYES = ("Thanks!", "Bye, all.", "Thanks, talk soon.", "Cheers.", "Thanks, bye.")
HEADERS = ("Meeting date: {full_date}", "Date: {full_date}", "Meeting transcript, {full_date}", "Recorded on {full_date}")
# The moments that carry the content, by name: the hard split words them its own way.
PHRASES = {
    "ASKS": ASKS, "VOLUNTEERS": VOLUNTEERS, "PROPOSALS": PROPOSALS, "CHAIR_DECISIONS": CHAIR_DECISIONS,
    "OPENERS": OPENERS, "CLOSINGS": CLOSINGS, "SOMEONE_SHOULD": ph.SOMEONE_SHOULD, "TAKE_IT_LATER": ph.TAKE_IT_LATER,
}
# The hard split's own phrasings of the moments that carry the content (asks, offers, proposals, decisions).
HARD_PHRASES = {
    "ASKS": (
        "Would you be able to {do}, {first}? {by_when_cap} is the deadline.",
        "{first}, this one's yours if you'll have it: {do}, {by_when}.",
        "Can I lean on you for this, {first}? We need someone to {do} {by_when}.",
    ),
    "VOLUNTEERS": (
        "Leave that with me. I'll {do} {by_when}.",
        "Put me down to {do}; you'll have it {by_when}.",
        "That's squarely my job, so I'll {do}, {by_when}.",
    ),
    "PROPOSALS": ("Here's a thought: we {say}.", "Hear me out. We could {say}.", "The obvious move is to {say}.",
                  "Strawman proposal: we {say}."),
    "CHAIR_DECISIONS": ("Right, let's land this. We {say}.", "I'm calling it. We {say}.",
                        "Unless anyone screams, we {say}.", "Decision made, then: we {say}."),
    "OPENERS": ("Shall we make a start?", "Morning all, let's crack on.", "Right, quorum. Let's begin."),
    "CLOSINGS": ("Good, that's us done. Cheers, everyone.", "We'll stop there. Thanks for your time.",
                 "That's the lot. Thank you all."),
    "SOMEONE_SHOULD": ph.HARD_SOMEONE_SHOULD,
    "TAKE_IT_LATER": ph.HARD_TAKE_IT_LATER,
}

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_KEEP_CASE_WORDS = ("I", "I'm", "I'd", "I've", "I'll")


# -- building a meeting --------------------------------------------------------------


@dataclass(frozen=True)
class Speaker:
    name: str
    role: str

    @property
    def first(self) -> str:
        return self.name.split()[0]


@dataclass
class Plan:
    """How much a meeting holds; grown step by step until it reaches its length."""

    issues: int = 1
    extras: list[int] = field(default_factory=lambda: [0])
    small_talk: int = 0
    digressions: int = 0
    parked: bool = False
    recap: bool = False
    second_actions: int = 0


@dataclass
class Meeting:
    transcript: str
    minutes: str
    meta: dict
    words: int


class Conversation:
    """The lines of a meeting, who said what, and what was decided and assigned."""

    def __init__(self, rng: random.Random, speakers: Sequence[Speaker], ctx: dict, setup: "Setup | None" = None) -> None:
        self.rng = rng
        self.setup = setup
        self.style = setup.style if setup else "plain"
        self.real = self.style != "plain"
        self.hard = self.style == "hard"
        self.phenomena: set[str] = set()
        self.superseded: list[str] = []
        self.no_decision = bool(setup and setup.no_decision)
        self.speakers = list(speakers)
        self.chair = speakers[0]
        self.ctx = ctx
        self.lines: list[tuple[Speaker, str]] = []
        self.spoken = {speaker.name: 0 for speaker in speakers}
        self.decisions: list[str] = []
        self.used: set[str] = set()  # reasons already given, so none is said twice
        self.actions: list[dict] = []

    def say(self, speaker: Speaker, text: str) -> None:
        self.lines.append((speaker, text))
        self.spoken[speaker.name] += 1

    def pick(self, *exclude: Speaker) -> Speaker:
        """Someone other than ``exclude`` and the last speaker, most often one who has said the least."""
        names = {speaker.name for speaker in exclude}
        pool = [speaker for speaker in self.speakers if speaker.name not in names]
        if self.lines and len(pool) > 1:
            pool = [speaker for speaker in pool if speaker is not self.lines[-1][0]]
        if self.rng.random() < 0.6:
            least = min(self.spoken[speaker.name] for speaker in pool)
            pool = [speaker for speaker in pool if self.spoken[speaker.name] == least]
        return self.rng.choice(pool)

    def address(self, speaker: Speaker) -> str:
        """How a speaker is called to their face: the first name in plain meetings; in real ones now and
        then a nickname, and a name that tells apart two speakers who share a first name."""
        if not self.real:
            return speaker.first
        if self.setup and speaker.first in self.setup.shared_firsts:
            self.phenomena.add("shared_first_name")
            return speaker.name if self.rng.random() < 0.6 else speaker.name.split()[-1]
        nickname = ph.NICKNAMES.get(speaker.first)
        if nickname and self.rng.random() < 0.4:
            self.phenomena.add("nicknames")
            return nickname
        self.phenomena.add("first_names")
        return speaker.first

    def refer(self, speaker: Speaker) -> str:
        """How a speaker is talked about: as when addressed, or in real meetings now and then by role."""
        if self.real and self.rng.random() < 0.3:
            self.phenomena.add("roles")
            return f"the {speaker.role.lower()}"
        return self.address(speaker)

    def phrase(self, name: str) -> Sequence[str]:
        """The pool of phrasings ``name`` of PHRASES, or of HARD_PHRASES in the hard split."""
        return (HARD_PHRASES if self.hard else PHRASES)[name]

    def fill(self, template: str, **extra: str) -> str:
        return template.format_map({**self.ctx, **extra})

    def clause(self, template: str, **extra: str) -> str:
        """A sentence template as a clause: first letter lowered (unless a name), no final stop."""
        text = self.fill(template, **extra).rstrip(".!?")
        first_word = template.split()[0]
        if template.startswith("{") or first_word in _KEEP_CASE_WORDS:
            return text
        return text[0].lower() + text[1:]


def _spoken_date(day: dt.date) -> str:
    return f"{MONTHS[day.month - 1]} {day.day}"


def _ordinal(number: int) -> str:
    suffix = "th" if 11 <= number % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def _is_workday(day: dt.date) -> bool:
    """A weekday outside the year-end holidays."""
    year_end = (day.month == 12 and day.day >= 24) or (day.month == 1 and day.day == 1)
    return day.weekday() < 5 and not year_end


def _add_workdays(day: dt.date, count: int) -> dt.date:
    while count > 0:
        day += dt.timedelta(days=1)
        if _is_workday(day):
            count -= 1
    return day


def _due_words(rng: random.Random, due: dt.date) -> dict:
    weekday, month_day = WEEKDAYS[due.weekday()], _spoken_date(due)
    by_when = rng.choice((
        f"by {weekday} {month_day}", f"by {weekday}, {month_day}", f"by {month_day}",
        f"by end of day {weekday}, {month_day}", f"no later than {weekday} {month_day}",
        f"by the {_ordinal(due.day)} of {MONTHS[due.month - 1]}",
    ))
    short = rng.choice((weekday, month_day, f"the {_ordinal(due.day)}"))
    return {
        "by_when": by_when, "by_when_cap": by_when[0].upper() + by_when[1:],
        "short": short, "short_cap": short[0].upper() + short[1:],
        "wd_md": f"{weekday} {month_day}",
    }


def _relative_words(phrase: str, short: str) -> dict:
    return {
        "by_when": f"by {phrase}", "by_when_cap": f"By {phrase}",
        "short": short, "short_cap": short[0].upper() + short[1:], "wd_md": phrase,
    }


def _due(conv: Conversation, meeting_date: dt.date, after: dt.date | None = None) -> tuple[dt.date, dict, str]:
    """A due date, the words that say it and the phrase the meta records; in real meetings most are
    said relative to the meeting ("by next Tuesday") and the minutes resolve them."""
    rng = conv.rng
    if conv.real and rng.random() < 0.65:
        for _ in range(6):
            drawn = ph.relative_due(rng, meeting_date, conv.hard)
            if drawn and (after is None or drawn[0] > after):
                conv.phenomena.add("relative_dates")
                return drawn[0], _relative_words(drawn[1], drawn[2]), drawn[1]
    due = _add_workdays(after or meeting_date, rng.randint(1, 5) if after else rng.randint(2, 16))
    words = _due_words(rng, due)
    return due, words, words["wd_md"]


def _assign(conv: Conversation, task: str, meeting_date: dt.date) -> None:
    """One action item, assigned in conversation in one of five ways (seven in real meetings)."""
    rng = conv.rng
    chair = conv.chair
    do = conv.fill(task)
    if conv.real:
        due, words, said = _due(conv, meeting_date)
        style = rng.choices(("ask", "volunteer", "reassign", "renegotiate", "peer", "later", "absent"),
                            weights=(24, 20, 10, 12, 8, 16, 10))[0]
    else:
        due = _add_workdays(meeting_date, rng.randint(2, 16))
        words = _due_words(rng, due)
        said = words["wd_md"]
        style = rng.choices(("ask", "volunteer", "reassign", "renegotiate", "peer"), weights=(34, 30, 12, 14, 10))[0]
    if style == "ask":
        owner = conv.pick(chair)
        conv.say(chair, conv.fill(rng.choice(conv.phrase("ASKS")), first=conv.address(owner), do=do, **words))
        conv.say(owner, conv.fill(rng.choice(ASK_REPLIES), **words))
    elif style == "volunteer":
        owner = conv.pick(chair)
        conv.say(owner, conv.fill(rng.choice(conv.phrase("VOLUNTEERS")), do=do, **words))
        conv.say(chair, conv.fill(rng.choice(VOLUNTEER_THANKS), first=conv.address(owner)))
    elif style == "reassign":
        asked = conv.pick(chair)
        owner = conv.pick(chair, asked)
        out_date = _spoken_date(_add_workdays(meeting_date, rng.randint(1, 3)))
        conv.say(chair, f"{conv.address(asked)}, could you {do}?")
        conv.say(asked, conv.fill(rng.choice(EXCUSES), out_date=out_date) + " " + conv.fill(rng.choice(HANDOVERS), first=conv.refer(owner)))
        conv.say(owner, conv.fill(rng.choice(TAKE_OVERS), **words))
        conv.say(chair, conv.fill(rng.choice(TAKE_OVER_CONFIRMS), first=conv.address(owner), **words))
    elif style == "renegotiate":
        owner = conv.pick(chair)
        if conv.real:
            first_ask = words
            due, words, said = _due(conv, meeting_date, after=due)
        else:
            first_ask = _due_words(rng, due)
            due = _add_workdays(due, rng.randint(1, 5))
            words = _due_words(rng, due)
            said = words["wd_md"]
        conv.say(chair, f"{conv.address(owner)}, can you {do} {first_ask['by_when']}?")
        conv.say(owner, conv.fill(rng.choice(RENEGOTIATIONS), short_cap=first_ask["short_cap"], wd_md=words["wd_md"]))
        conv.say(chair, conv.fill(rng.choice(RENEGOTIATION_ACCEPTS), **words))
    elif style == "peer":
        owner = conv.pick(chair)
        peer = conv.pick(owner)
        conv.say(peer, conv.fill(rng.choice(PEER_SUGGESTIONS), first=conv.address(owner), do=do))
        conv.say(owner, conv.fill(rng.choice(PEER_ACCEPTS), do=do, **words))
    elif style == "later":  # "someone should ..." and an owner only some lines later
        conv.phenomena.add("owner_named_later")
        owner = conv.pick(chair)
        conv.say(chair, conv.fill(rng.choice(conv.phrase("SOMEONE_SHOULD")), do=do, **words))
        conv.say(conv.pick(chair, owner), rng.choice(ph.SOMEONE_PAUSES))
        if rng.random() < 0.5:
            conv.say(conv.pick(owner), rng.choice(ph.SOMEONE_PAUSES))
        conv.say(owner, rng.choice(conv.phrase("TAKE_IT_LATER")))
        if not conv.hard or rng.random() < 0.5:
            conv.say(chair, conv.fill(rng.choice(VOLUNTEER_THANKS), first=conv.address(owner)))
    else:  # someone not in the meeting is proposed, and one who is takes it
        conv.phenomena.add("absent_people")
        absent = conv.setup.absent[0]
        owner = conv.pick(chair)
        names = dict(absent=absent, absent_first=absent.split()[0], team=conv.setup.absent_team, do=do)
        conv.say(chair, conv.fill(rng.choice(ph.ABSENT_HANDOVERS), **names))
        conv.say(owner, conv.fill(rng.choice(ph.ABSENT_DECLINES), **names, **words))
    conv.actions.append({"owner": owner.name, "task": do[0].upper() + do[1:], "due": due.isoformat(),
                         "spoken": f"{conv.address(owner) if conv.real else owner.first}, {do}, {words['wd_md']}",
                         "said": said})


def _discuss(conv: Conversation, issue: dict, first: bool, extras: int, actions: int, meeting_date: dt.date) -> None:
    """One agenda issue: context, proposals, a decision reached in conversation, action items."""
    rng = conv.rng
    chair = conv.chair
    ask = conv.fill(rng.choice(issue["asks"]))
    conv.say(chair, rng.choice(FIRST_TRANSITIONS if first else TRANSITIONS).format(ask=ask))

    facts = list(issue["facts"])
    rng.shuffle(facts)
    if facts:
        lead, fact = rng.choice(FACT_LEADS), facts.pop()
        text = lead + conv.clause(fact) + "." if lead.endswith((", ", ": ")) else lead + conv.fill(fact)
        conv.say(conv.pick(chair), text)

    options = list(issue["options"])
    rng.shuffle(options)
    chosen, other = options[0], options[1]
    mode = rng.choices(("debate", "quick", "settled"), weights=(55, 25, 20))[0]
    if mode == "debate":
        proposed, countered = (chosen, other) if rng.random() < 0.5 else (other, chosen)
        proposer = conv.pick(chair)
        conv.say(proposer, _with_reason(conv, conv.fill(rng.choice(conv.phrase("PROPOSALS")), say=conv.fill(proposed["say"])), proposed))
        objector = conv.pick(proposer)
        conv.say(objector, _objection(conv, proposed) + " " + _counter(conv, countered))
        reason = _pro(conv, proposed)
        replies = REPLIES if reason else [reply for reply in REPLIES if "{" not in reply]
        conv.say(proposer, conv.fill(rng.choice(replies), pro_clause=conv.clause(reason) if reason else ""))
    else:
        proposer = conv.pick(chair) if mode == "quick" else chair
        conv.say(proposer, _with_reason(conv, conv.fill(rng.choice(conv.phrase("PROPOSALS")), say=conv.fill(chosen["say"])), chosen))
        objector = None
        proposed = countered = chosen
    mentioned = (proposed["say"], countered["say"])

    # More back-and-forth where the meeting has room for it.
    if mode == "quick":  # nobody argues against it
        pool = [("pro", chosen), ("con", other)]
    else:
        pool = [("pro", chosen), ("pro", other), ("con", chosen), ("con", other), ("neutral", None)]
    pool += [("fact", None)] * len(facts)
    rng.shuffle(pool)
    for kind, option in pool[:extras]:
        speaker = conv.pick(chair) if rng.random() < 0.7 else conv.pick(proposer)
        if kind == "fact":
            conv.say(speaker, conv.fill(facts.pop()))
        elif kind == "neutral":
            conv.say(speaker, conv.fill(rng.choice(NEUTRAL_VOICES), first=conv.refer(proposer)))
        elif kind == "pro":
            reason = _pro(conv, option)
            if reason:
                templates = POINTS_FOR + (SHORT_POINTS_FOR if option["say"] in mentioned else ())
                conv.say(speaker, conv.fill(rng.choice(templates), say=conv.fill(option["say"]), pro=conv.fill(reason), pro_clause=conv.clause(reason)))
        else:
            reason = _con(conv, option)
            if reason:
                templates = POINTS_AGAINST + (SHORT_POINTS_AGAINST if option["say"] in mentioned else ())
                conv.say(speaker, conv.fill(rng.choice(templates), say=conv.fill(option["say"]), con=conv.fill(reason), con_clause=conv.clause(reason)))

    say = conv.fill(chosen["say"])
    if conv.no_decision:  # the meeting talks it over and decides nothing
        conv.say(chair, rng.choice(ph.NO_DECISION_LINES))
        conv.say(conv.pick(chair), rng.choice(ph.NO_DECISION_REPLIES))
        tasks = list(issue["tasks"]) or [rng.choice(ph.NO_DECISION_TASKS).replace("{ask}", ask)]
        taken = {action["task"].lower() for action in conv.actions}
        for task in [task for task in tasks if conv.fill(task).lower() not in taken][:actions]:
            _assign(conv, task, meeting_date)
        return
    if conv.real and mode == "debate" and rng.random() < 0.35:  # decided one way, then revised
        first_say = conv.fill(other["say"])
        conv.say(chair, conv.fill(rng.choice(conv.phrase("CHAIR_DECISIONS")), say=first_say))
        conv.say(conv.pick(chair), rng.choice(AGREEMENTS))
        con = _con(conv, other) or rng.choice(GENERIC_CONS)
        reopener = conv.pick(chair)
        conv.say(reopener, conv.fill(rng.choice(ph.REOPENS), con=conv.fill(con), say=say))
        conv.say(conv.pick(chair, reopener), rng.choice(AGREEMENTS))
        conv.say(chair, conv.fill(rng.choice(ph.REVISIONS), say=say))
        conv.superseded.append(conv.fill(other["decision"]))
        conv.phenomena.add("revised_decision")
    elif mode == "quick":
        conv.say(conv.pick(chair, proposer), rng.choice(AGREEMENTS))
        conv.say(chair, conv.fill(rng.choice(QUICK_DECISIONS), say=say))
    elif mode == "settled" or rng.random() < 0.25:
        conv.say(conv.pick(chair), conv.fill(rng.choice(SETTLE_REQUESTS), say=say))
        conv.say(chair, rng.choice(SETTLE_ANSWERS))
    else:
        conv.say(chair, conv.fill(rng.choice(conv.phrase("CHAIR_DECISIONS")), say=say))
        if objector is not None and objector is not chair and rng.random() < 0.4:
            conv.say(objector, rng.choice(GRUDGING))
        else:
            conv.say(conv.pick(chair), rng.choice(AGREEMENTS))
    conv.decisions.append(conv.fill(chosen["decision"]))

    tasks = list(dict.fromkeys(list(chosen["tasks"]) + list(issue["tasks"])))
    rng.shuffle(tasks)
    taken = {action["task"].lower() for action in conv.actions}
    for task in [task for task in tasks if conv.fill(task).lower() not in taken][:actions]:
        _assign(conv, task, meeting_date)


def _reason(conv: Conversation, own: Sequence[str], generic: Sequence[str]) -> str | None:
    """A reason not given yet in this meeting (the option's own, now and then a generic
    one), or None when every reason has been said."""
    rng = conv.rng
    fresh_own = [reason for reason in own if reason not in conv.used]
    fresh_generic = [reason for reason in generic if reason not in conv.used]
    if fresh_own and (rng.random() < 0.85 or not fresh_generic):
        reason = rng.choice(fresh_own)
    elif fresh_generic:
        reason = rng.choice(fresh_generic)
    else:
        return None
    conv.used.add(reason)
    return reason


def _pro(conv: Conversation, option: dict) -> str | None:
    return _reason(conv, option["pros"], GENERIC_PROS)


def _con(conv: Conversation, option: dict) -> str | None:
    return _reason(conv, option["cons"], GENERIC_CONS)


def _with_reason(conv: Conversation, text: str, option: dict) -> str:
    """``text`` followed by a fresh reason for ``option``, where one is left."""
    reason = _pro(conv, option)
    return f"{text} {conv.fill(reason)}" if reason else text


def _objection(conv: Conversation, option: dict) -> str:
    con = _con(conv, option)
    if con is None:
        return conv.rng.choice(BARE_OBJECTIONS)
    return conv.fill(conv.rng.choice(OBJECTIONS), con=conv.fill(con), con_clause=conv.clause(con))


def _counter(conv: Conversation, option: dict) -> str:
    say = conv.fill(option["say"])
    templates = [t for t in COUNTERS if "instead" not in t] if "instead" in say else COUNTERS
    return conv.fill(conv.rng.choice(templates), say=say)


@dataclass(frozen=True)
class Setup:
    """What a meeting is about and who is in it, fixed before its length is planned."""

    topic: dict
    date: dt.date
    speakers: tuple[Speaker, ...]
    ctx: dict
    title: str
    purpose: str
    issues: tuple[dict, ...]
    header: str
    list_participants: bool
    style: str = "plain"
    shared_firsts: frozenset = frozenset()  # first names two speakers share
    absent: tuple[str, ...] = ()  # people talked about who are not in the meeting
    absent_team: str = ""
    no_decision: bool = False
    label_first: bool = False  # transcript labels: the full name once, then the first name


def _real_setup(rng: random.Random, setup: Setup, style: str) -> Setup:
    """The draws only real meetings make, after the plain ones, so a plain meeting stays as it was."""
    hard = style == "hard"
    speakers = list(setup.speakers)
    shared: frozenset = frozenset()
    if len(speakers) >= 3 and rng.random() < (0.3 if hard else 0.2):
        # two speakers (not the chair) share a first name
        a, b = rng.sample(range(1, len(speakers)), 2)
        if speakers[b].first in HELD_OUT_FIRST_NAMES:  # a held-out name stays
            a, b = b, a
        first = speakers[a].first
        speakers[b] = Speaker(f"{first} {speakers[b].name.split()[-1]}", speakers[b].role)
        shared = frozenset({first})
    if hard:  # the hard split's own names
        lasts = rng.sample(ph.HARD_LAST_NAMES, len(speakers))
        firsts = rng.sample(ph.HARD_FIRST_NAMES, len(speakers))
        if shared:
            firsts[b] = firsts[a]
            shared = frozenset({firsts[a]})
        speakers = [Speaker(f"{f} {l}", s.role) for f, l, s in zip(firsts, lasts, speakers)]
    absent = tuple(rng.sample(ph.HARD_ABSENT if hard else ph.ABSENT, 2))
    return replace(
        setup, speakers=tuple(speakers), style=style, shared_firsts=shared, absent=absent,
        absent_team=rng.choice(ph.ABSENT_TEAMS), no_decision=rng.random() < 0.1,
        label_first=not shared and rng.random() < 0.4,
    )


def _setup(rng: random.Random, held_out: bool, topics: Sequence[dict] = TOPICS) -> Setup:
    topic = rng.choice(topics)
    span = (LAST_DATE - FIRST_DATE).days
    date = FIRST_DATE + dt.timedelta(days=rng.randint(0, span))
    while not _is_workday(date):
        date += dt.timedelta(days=1)

    count = rng.choices((3, 4, 5, 6), weights=(30, 35, 22, 13))[0]
    firsts = rng.sample(FIRST_NAMES, count)
    if held_out:  # at least one speaker no training meeting has
        for position in rng.sample(range(count), rng.randint(1, 2)):
            firsts[position] = rng.choice([name for name in HELD_OUT_FIRST_NAMES if name not in firsts])
    lasts = rng.sample(LAST_NAMES, count)
    roles = [topic["roles"][0]] + rng.sample(topic["roles"][1:], count - 1)
    speakers = tuple(Speaker(f"{first} {last}", role) for first, last, role in zip(firsts, lasts, roles))

    ctx: dict[str, str] = {}
    for key, values in topic["slots"].items():
        names = key.split(",")
        ctx.update(zip(names, rng.sample(values, len(names))))
    if "quarter" in topic:  # the quarter under review, or the one being planned
        quarter = (date.month - 1) // 3 + (1 if topic["quarter"] == "next" else 0)
        ctx["quarter"] = f"Q{quarter % 4 + 1}"
    ctx.update(
        soon=_spoken_date(date + dt.timedelta(days=rng.randint(4, 12))),
        later=_spoken_date(date + dt.timedelta(days=rng.randint(15, 45))),
        earlier=_spoken_date(date - dt.timedelta(days=rng.randint(2, 12))),
        weekday=WEEKDAYS[date.weekday()],
    )
    title = rng.choice(topic["titles"]).format_map(ctx)
    full_date = f"{WEEKDAYS[date.weekday()]}, {_spoken_date(date)}, {date.year}"
    return Setup(
        topic=topic,
        date=date,
        speakers=speakers,
        ctx=ctx,
        title=title[0].upper() + title[1:],
        purpose=rng.choice(topic["purposes"]).format_map(ctx),
        issues=_agenda(rng, topic["issues"]),
        header=rng.choice(HEADERS).format(full_date=full_date),
        list_participants=rng.random() < 0.5,
    )


def _agenda(rng: random.Random, issues: Sequence[dict]) -> tuple[dict, ...]:
    """The order issues come up in; the main issue is always among the ones discussed."""
    main, rest = issues[0], rng.sample(issues[1:], len(issues) - 1)
    if rng.random() < 0.6:
        return (main, *rest)
    rest.insert(rng.randint(0, 1), main)
    return tuple(rest)


def _aside(conv: Conversation, snippets: Sequence[tuple[str, ...]], used: list[int]) -> None:
    """A bit of small talk or a digression: a few lines, each by a different person."""
    rng = conv.rng
    index = rng.choice([i for i in range(len(snippets)) if i not in used])
    used.append(index)
    last = conv.lines[-1][0] if conv.lines else None
    opener = rng.choice([speaker for speaker in conv.speakers if speaker is not last])
    people = [opener] + rng.sample([speaker for speaker in conv.speakers if speaker is not opener], 2)
    names = {f"f{i}": person.first for i, person in enumerate(people)}
    for person, line in zip(people, snippets[index]):
        conv.say(person, conv.fill(line, **names))


def _build(seed: str, setup: Setup, plan: Plan) -> Meeting:
    rng = random.Random(f"{seed}/talk")
    conv = Conversation(rng, setup.speakers, setup.ctx, setup)
    chair = conv.chair
    small_talk_used: list[int] = []
    digressions_used: list[int] = []

    for _ in range(plan.small_talk):
        _aside(conv, SMALL_TALK, small_talk_used)
        conv.phenomena.add("tangents")
    conv.say(chair, rng.choice(conv.phrase("OPENERS")) + " " + rng.choice(PURPOSE_LINES).format(purpose=setup.purpose))
    if setup.shared_firsts:
        conv.phenomena.add("shared_first_name")
    if conv.real and not setup.list_participants:  # everyone introduced once, with their role
        people = "; ".join(f"{s.name}, {s.role}" for s in setup.speakers)
        conv.say(chair, rng.choice(ph.INTRODUCTIONS).format(people=people))
    if conv.real and rng.random() < 0.5:
        absent = setup.absent[1]
        conv.say(conv.pick(), rng.choice(ph.HARD_ABSENT_MENTIONS if conv.hard else ph.ABSENT_MENTIONS).format(
            absent=absent, absent_first=absent.split()[0], team=setup.absent_team))
        conv.phenomena.add("absent_people")

    digress_after = set(rng.sample(range(plan.issues), min(plan.digressions, plan.issues)))
    for index in range(plan.issues):
        _discuss(conv, setup.issues[index], index == 0, plan.extras[index],
                 1 + (index < plan.second_actions), setup.date)
        if index in digress_after:
            _aside(conv, DIGRESSIONS, digressions_used)
            conv.say(chair, rng.choice(BACK_ON_TRACK))
            conv.phenomena.add("tangents")

    if plan.parked and plan.issues < len(setup.issues):
        ask = conv.fill(rng.choice(setup.issues[plan.issues]["asks"]))
        conv.say(chair, rng.choice(PARKED).format(ask=ask))
        conv.say(conv.pick(chair), rng.choice(PARKED_REPLIES))
    if plan.recap:
        recap = " ".join(f"{action['spoken']}." for action in conv.actions)
        conv.say(chair, f"{rng.choice(RECAP_LEADS)} {recap}")
    conv.say(chair, rng.choice(conv.phrase("CLOSINGS")))
    silent = [speaker for speaker in setup.speakers if conv.spoken[speaker.name] == 0]
    others = [speaker for speaker in setup.speakers[1:] if speaker not in silent]
    for speaker in silent + rng.sample(others, min(len(others), rng.randint(0, 2))):
        conv.say(speaker, rng.choice(GOODBYES))

    head = [setup.header]
    if setup.list_participants:
        head.append("Participants: " + ", ".join(f"{s.name} ({s.role})" for s in setup.speakers))
    lines = _roughen(conv) if conv.real else conv.lines
    turns: list[list] = []
    for speaker, text in lines:
        if turns and turns[-1][0] is speaker:
            turns[-1][1] += " " + text
        else:
            turns.append([speaker, text])
    labelled: set[str] = set()

    def label(speaker: Speaker) -> str:
        if setup.label_first and speaker.name in labelled:
            conv.phenomena.add("first_names")
            return speaker.first
        labelled.add(speaker.name)
        return speaker.name

    transcript = "\n".join(head) + "\n\n" + "\n".join(f"{label(speaker)}: {text}" for speaker, text in turns)

    attendees = list(dict.fromkeys(speaker.name for speaker, _ in conv.lines))
    action_items = [{key: action[key] for key in ("owner", "task", "due")} for action in conv.actions]
    decisions = list(conv.decisions) or [ph.NO_DECISION]
    if conv.real and not conv.decisions:
        conv.phenomena.add("no_decision")
    minutes = render(setup.title, setup.date.isoformat(), attendees, decisions, action_items)
    words = len(transcript.split())
    meta = {
        "topic": setup.topic["key"],
        "title": setup.title,
        "date": setup.date.isoformat(),
        "speakers": [{"name": speaker.name, "role": speaker.role} for speaker in setup.speakers],
        "decisions": list(conv.decisions),
        "action_items": action_items,
        "words": words,
    }
    if conv.real:
        meta["decisions"] = decisions
        meta["superseded_decisions"] = list(conv.superseded)
        meta["due_said"] = [action["said"] for action in conv.actions]
        meta["absent"] = [name for name in setup.absent if name.split()[0] in transcript]
        meta["phenomena"] = [name for name in ph.PHENOMENA if name in conv.phenomena]
    return Meeting(transcript, minutes, meta, words)


def _lower_start(conv: Conversation, text: str) -> str:
    """``text`` to follow a lead-in: its first letter lowered, unless it starts a name or "I"."""
    first_word = text.split()[0].rstrip(",.?!:;'")
    names = {part for s in conv.speakers for part in s.name.split()} | {
        part for name in (conv.setup.absent if conv.setup else ()) for part in name.split()}
    if first_word in _KEEP_CASE_WORDS or first_word in names or first_word in ph.NICKNAMES.values() or first_word[1:2].isupper():
        return text
    return text[0].lower() + text[1:]


def _roughen(conv: Conversation) -> list[tuple[Speaker, str]]:
    """Filler at the start of some lines, and interruptions that cut a line between two sentences."""
    rng = conv.rng
    out: list[tuple[Speaker, str]] = []
    for speaker, text in conv.lines:
        if rng.random() < 0.12 and text[:1].isupper():
            text = rng.choice(ph.FILLERS) + _lower_start(conv, text)
            conv.phenomena.add("filler")
        sentences = text.split(". ")
        if len(sentences) >= 2 and rng.random() < 0.08:
            cut = rng.randint(1, len(sentences) - 1)
            other = rng.choice([s for s in conv.speakers if s is not speaker])
            out.append((speaker, ". ".join(sentences[:cut]) + ". And the other thing is, well,"))
            out.append((other, rng.choice(ph.INTERRUPTIONS)))
            out.append((speaker, rng.choice(ph.RESUMES) + " " + _lower_start(conv, ". ".join(sentences[cut:]))))
            conv.phenomena.add("interruptions")
        else:
            out.append((speaker, text))
    return out


def _grow(rng: random.Random, plan: Plan, issues_available: int, long: bool = False) -> bool:
    """Add one thing to the plan; False when there is nothing left to add."""
    steps = []
    if plan.issues < issues_available:
        steps += [("issue", 5), ("parked", 1)] if not plan.parked else [("issue", 5)]
    if any(extra < MAX_EXTRAS for extra in plan.extras):
        steps.append(("extra", 4))
    if plan.second_actions < plan.issues:
        steps.append(("second_action", 2))
    if plan.small_talk < 2:
        steps.append(("small_talk", 1))
    if plan.digressions < (6 if long else 3):
        steps.append(("digression", 1))
    if not plan.recap:
        steps.append(("recap", 1))
    if not steps:
        return False
    step = rng.choices([name for name, _ in steps], weights=[weight for _, weight in steps])[0]
    if step == "issue":
        plan.issues += 1
        plan.extras.append(0)
    elif step == "extra":
        plan.extras[rng.choice([i for i, extra in enumerate(plan.extras) if extra < MAX_EXTRAS])] += 1
    elif step == "second_action":
        plan.second_actions += 1
    elif step == "small_talk":
        plan.small_talk += 1
    elif step == "digression":
        plan.digressions += 1
    elif step == "recap":
        plan.recap = True
    else:
        plan.parked = True
    return True


def target_words(rng: random.Random) -> int:
    """A length to aim at: mostly 300-700 words, leaning short; now and then up to MAX_WORDS."""
    if rng.random() < LONG_SHARE:
        return rng.randint(750, MAX_WORDS)
    return MIN_WORDS + int(380 * rng.random() ** 1.8)


def _short_target(seed: str) -> int:
    """SHORT_SHARE of seeds aim at SHORT_MIN_WORDS to MIN_WORDS - 1 words (0 for the others), drawn from a
    generator of their own so that the others' meetings stay as they were."""
    rng = random.Random(f"{seed}/short")
    return rng.randint(SHORT_MIN_WORDS, MIN_WORDS - 1) if rng.random() < SHORT_SHARE else 0


def _long_setup(rng: random.Random, setup: Setup) -> Setup:
    """A long meeting covers its topic and then the issues of one to three more, under one title."""
    others = rng.sample([topic for topic in TOPICS if topic is not setup.topic], rng.randint(1, 3))
    ctx = dict(setup.ctx)
    issues = list(setup.issues)
    for topic in others:
        for key, values in topic["slots"].items():
            names = key.split(",")
            for name, value in zip(names, rng.sample(values, len(names))):
                ctx.setdefault(name, value)
        if "quarter" in topic:
            quarter = (setup.date.month - 1) // 3 + (1 if topic["quarter"] == "next" else 0)
            ctx.setdefault("quarter", f"Q{quarter % 4 + 1}")
        issues += _agenda(rng, topic["issues"])
    return replace(setup, ctx=ctx, issues=tuple(issues))


def make_meeting(seed: str, held_out: bool = False, style: str = "plain") -> Meeting | None:
    """One meeting from ``seed``; None when no plan fits the length bounds.

    ``style`` "plain" (the default) is the meeting this function has always made; "real" adds the
    phenomena of ``phenomena.py``; "hard" adds them with the hard split's domains, names and phrasings;
    "long" adds them to a meeting of LONG_MIN_WORDS to LONG_MAX_WORDS.
    """
    if style not in STYLES:
        raise ValueError(f"Meeting style {style!r} is not one of {', '.join(STYLES)}.")
    rng = random.Random(seed)
    setup = _setup(rng, held_out, HARD_TOPICS if style == "hard" else TOPICS)
    target = target_words(rng)
    low, high, max_extras = MIN_WORDS, MAX_WORDS, MAX_EXTRAS
    if style != "plain":
        setup = _real_setup(rng, setup, style)
    short = style in ("real", "hard") and _short_target(seed)
    if short:
        low, target = SHORT_MIN_WORDS, short
    if style == "long":
        setup = _long_setup(rng, setup)
        low, high = LONG_MIN_WORDS, LONG_MAX_WORDS
        target = rng.randint(LONG_MIN_WORDS + 200, LONG_MAX_WORDS)
    plan = Plan(small_talk=int(rng.random() < 0.6 and not short))  # a short meeting gets down to business
    meeting = _build(seed, setup, plan)
    while meeting.words < target:
        if not _grow(rng, plan, len(setup.issues), long=style == "long"):
            break
        grown = _build(seed, setup, plan)
        if grown.words > high:
            break
        meeting = grown
    if not low <= meeting.words <= high:
        return None
    return meeting


def make_rows(split: str, count: int, calendar: bool = False) -> list[dict]:
    """``count`` rows of ``split`` (test meetings use other seeds and held-out speakers; hard ones other
    seeds, domains, names and phrasings). ``calendar`` ends each prompt with ``phenomena.calendar`` of the
    meeting's date (the bundled files have none: it did not help the quickstart's model, docs/quickstart.md)."""
    rows = []
    index = 0
    style = SPLIT_STYLES.get(split, "plain")
    while len(rows) < count:
        meeting = make_meeting(f"meeting-minutes/{split}/{index}", held_out=split == "test", style=style)
        index += 1
        if meeting is None:
            continue
        rows.append({
            "messages": [
                {"role": "user", "content": f"{INSTRUCTION}\n\n{meeting.transcript}" + (
                    f"\n\n{ph.calendar(dt.date.fromisoformat(meeting.meta['date']))}" if calendar else "")},
                {"role": "assistant", "content": meeting.minutes},
            ],
            "meta": {"id": f"{split}-{len(rows):04d}", **meeting.meta},
        })
    return rows


def write(directory: str | Path, calendar: bool = False) -> dict[str, Path]:
    """Write every split's jsonl (``train.jsonl``, ``test.jsonl``, ...) into ``directory``; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, count in SPLIT_SIZES.items():
        path = directory / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8", newline="\n") as handle:
            for row in make_rows(split, count, calendar):
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        written[split] = path
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the meeting-minutes dataset (the same files every time).")
    parser.add_argument("--out", default=str(Path(__file__).parent), help="Directory for the split files (default: the package's own).")
    parser.add_argument("--calendar", action="store_true",
                        help="End each prompt with a calendar of the weeks after the meeting (an experiment: docs/quickstart.md).")
    args = parser.parse_args(argv)
    for split, path in write(args.out, args.calendar).items():
        print(f"Wrote {SPLIT_SIZES[split]} {split} rows to {path}")


if __name__ == "__main__":
    main()
