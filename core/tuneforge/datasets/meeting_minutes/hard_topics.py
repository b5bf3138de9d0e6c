"""Domains only the hard split has: none of their titles, options or tasks occurs in training.

Same shape as ``generate.TOPICS`` (see there): titles, purposes, roles, slots, issues.
"""

from __future__ import annotations


def _option(say, decision, pros=(), cons=(), tasks=()):
    return {"say": say, "decision": decision, "pros": pros, "cons": cons, "tasks": tasks}


def _issue(asks, options, facts=(), tasks=()):
    return {"asks": asks, "options": options, "facts": facts, "tasks": tasks}


HARD_TOPICS: tuple[dict, ...] = (
    dict(
        key="school-field-trip",
        titles=("Year {year} field trip to {place}", "Planning the {place} trip", "{place} visit, Year {year}"),
        purposes=("the Year {year} trip to {place}", "sorting out the {place} visit", "whether the {place} trip goes ahead"),
        roles=("Head of Year", "Class Teacher", "Teaching Assistant", "School Business Manager", "Safeguarding Lead", "Parent Governor"),
        slots={
            "year": ("4", "5", "7", "9", "10"),
            "place": ("the science museum", "the coastal nature reserve", "the city farm", "the national gallery", "the water treatment works"),
            "pupils": ("sixty", "eighty-four", "ninety", "a hundred and twelve"),
            "fee": ("£12", "£18", "£25", "£30"),
        },
        issues=(
            _issue(
                asks=("how we get {pupils} pupils there and back", "what transport we book"),
                facts=("The coach firm quoted for two fifty-seaters.", "Last year the train was forty minutes late both ways."),
                options=(
                    _option("book two coaches from the usual firm", "Book two coaches from the usual coach firm.",
                            pros=("Door to door, nobody gets lost on a platform.",), cons=("Coaches have doubled in price since spring.",),
                            tasks=("send the coach firm the pupil numbers",)),
                    _option("take the train with a staggered departure", "Travel by train in two staggered groups.",
                            pros=("The rail group fare is a third of the coach price.",), cons=("Two changes with {pupils} children is a headcount nightmare.",),
                            tasks=("book the rail group tickets",)),
                ),
                tasks=("draft the risk assessment for the journey",),
            ),
            _issue(
                asks=("what we charge parents", "whether we ask parents for {fee} each"),
                facts=("Pupil premium can cover about a fifth of the pupils.",),
                options=(
                    _option("ask for a voluntary contribution of {fee}", "Ask parents for a voluntary contribution of {fee} per pupil.",
                            pros=("Nobody is kept off the trip for money.",), cons=("Voluntary means maybe half of it arrives.",),
                            tasks=("write the letter home about the contribution",)),
                    _option("cover the whole trip from the enrichment budget", "Fund the whole trip from the enrichment budget.",
                            pros=("No chasing parents for payments.",), cons=("It wipes out the budget for the spring term.",),
                            tasks=("move the money in the enrichment budget",)),
                ),
            ),
            _issue(
                asks=("how many adults come along", "the staffing ratio for the day"),
                facts=("The venue insists on one adult for every ten pupils.",),
                options=(
                    _option("bring parent volunteers to make up the numbers", "Use parent volunteers to meet the one-to-ten ratio.",
                            pros=("Parents love helping on trips.",), cons=("Every volunteer needs a background check first.",),
                            tasks=("run the background checks for the parent volunteers",)),
                    _option("release two extra teaching assistants for the day", "Release two extra teaching assistants for the trip.",
                            pros=("They already know the children.",), cons=("Two classes lose their support for a day.",),
                            tasks=("arrange cover for the released assistants",)),
                ),
            ),
        ),
    ),
    dict(
        key="clinic-rota",
        titles=("Clinic rota for {season}", "{clinic} staffing review", "Weekend cover at {clinic}"),
        purposes=("the {season} rota at {clinic}", "weekend cover at {clinic}", "patient waiting times at {clinic}"),
        roles=("Practice Manager", "Senior Nurse", "GP Partner", "Receptionist Lead", "Pharmacist", "Healthcare Assistant"),
        slots={
            "clinic": ("Riverside Surgery", "the Elm Street clinic", "Northgate Health Centre", "the Harbour Road practice"),
            "season": ("winter", "the flu season", "the summer holidays"),
            "wait": ("nine days", "two weeks", "eighteen days"),
        },
        issues=(
            _issue(
                asks=("how we cover Saturday mornings", "who staffs the Saturday clinic"),
                facts=("Routine appointments are running at {wait} to the first free slot.", "Saturday bookings fill within an hour of opening."),
                options=(
                    _option("pay locum doctors for Saturday sessions", "Use locum doctors for the Saturday morning sessions.",
                            pros=("The partners are exhausted already.",), cons=("Locums cost nearly twice a partner session.",),
                            tasks=("get three quotes from the locum agency",)),
                    _option("rotate the partners one Saturday a month each", "Rotate the partners so each covers one Saturday a month.",
                            pros=("Patients see a doctor who knows them.",), cons=("It means some partners work six days that week.",),
                            tasks=("draw up the partner Saturday rota",)),
                    _option("run Saturdays as nurse-led clinics", "Run Saturday mornings as nurse-led clinics.",
                            pros=("Most Saturday visits are for things nurses handle anyway.",), cons=("We'd still need a doctor on call.",),
                            tasks=("list the conditions the nurse-led clinic can see",)),
                ),
                tasks=("update the booking system with the new Saturday hours",),
            ),
            _issue(
                asks=("how we handle flu vaccination days", "whether we run mass vaccination sessions"),
                facts=("We have four thousand eligible patients on the list.",),
                options=(
                    _option("run two big drop-in vaccination days in the car park", "Hold two drop-in vaccination days in the car park.",
                            pros=("We did two thousand jabs in one day last year.",), cons=("If it rains, the queue becomes a complaint.",),
                            tasks=("order the marquee and the extra sharps bins",)),
                    _option("book vaccinations into normal appointments", "Give flu vaccinations in normal booked appointments.",
                            pros=("No extra staff needed on a weekend.",), cons=("It eats slots we don't have.",),
                            tasks=("send the text invitations to eligible patients",)),
                ),
            ),
        ),
    ),
    dict(
        key="restaurant-menu",
        titles=("{season} menu change at {venue}", "Menu and kitchen review", "{venue} menu relaunch"),
        purposes=("the {season} menu at {venue}", "what changes on the menu", "kitchen costs and the new menu"),
        roles=("Head Chef", "General Manager", "Sous Chef", "Front of House Manager", "Bar Manager", "Pastry Chef"),
        slots={
            "venue": ("The Copper Pot", "Saltmarsh Kitchen", "Olive and Ash", "the Quayside bistro"),
            "season": ("autumn", "spring", "summer", "winter"),
            "margin": ("58", "62", "66"),
            "dish": ("the lamb shoulder", "the crab linguine", "the mushroom risotto", "the pork belly"),
        },
        issues=(
            _issue(
                asks=("what happens to {dish}", "whether {dish} stays on the menu"),
                facts=("{dish} is our best seller but the gross margin on it is down to {margin} percent.", "Our supplier put prices up eleven percent this month."),
                options=(
                    _option("keep {dish} and raise its price by two pounds", "Keep {dish} on the menu at two pounds more.",
                            pros=("Regulars come in for that dish specifically.",), cons=("Two pounds on a main gets noticed in reviews.",),
                            tasks=("reprint the menus with the new prices",)),
                    _option("replace {dish} with a cheaper seasonal special", "Replace {dish} with a seasonal special.",
                            pros=("A special lets us change it when prices move.",), cons=("People will ask where their favourite went.",),
                            tasks=("cost out three seasonal specials",)),
                ),
                tasks=("renegotiate the produce order with the supplier",),
            ),
            _issue(
                asks=("whether we open on Mondays", "if Monday service is worth it"),
                facts=("Mondays averaged twenty-two covers over the last quarter.",),
                options=(
                    _option("close on Mondays and give the team a fixed day off", "Close the restaurant on Mondays.",
                            pros=("Staff turnover is our biggest cost right now.",), cons=("We lose the Monday private bookings.",),
                            tasks=("update the opening hours online",)),
                    _option("open Mondays with a short set menu", "Open on Mondays with a short set menu.",
                            pros=("A set menu means half the prep.",), cons=("A short menu still needs a full kitchen brigade.",),
                            tasks=("write the Monday set menu",)),
                ),
            ),
            _issue(
                asks=("how we handle allergen information", "how we fix the allergen labelling"),
                facts=("We had an allergen complaint two weeks ago.",),
                options=(
                    _option("put allergen codes next to every dish on the menu", "Print allergen codes next to every dish.",
                            pros=("Guests can see it at a glance.",), cons=("The menu gets cluttered.",),
                            tasks=("audit the recipes for all fourteen allergens",)),
                    _option("keep a separate allergen folder at every station", "Keep an allergen folder at every service station.",
                            pros=("It can go into full detail.",), cons=("Folders go missing on busy nights.",),
                            tasks=("train front of house on the allergen folder",)),
                ),
            ),
        ),
    ),
    dict(
        key="lab-equipment",
        titles=("Shared equipment in the {lab}", "{instrument} booking and maintenance", "{lab} equipment meeting"),
        purposes=("who gets time on the {instrument}", "the {lab} equipment budget", "the broken {instrument}"),
        roles=("Principal Investigator", "Lab Manager", "Postdoctoral Researcher", "PhD Student", "Research Technician", "Safety Officer"),
        slots={
            "lab": ("structural biology lab", "soil chemistry lab", "imaging core", "neuroscience lab"),
            "instrument": ("confocal microscope", "mass spectrometer", "cryostat", "sequencer"),
            "hours": ("sixty", "seventy-five", "ninety"),
            "grant": ("£40,000", "£65,000", "£120,000"),
        },
        issues=(
            _issue(
                asks=("how we share time on the {instrument}", "how bookings on the {instrument} work from now on"),
                facts=("The {instrument} was booked {hours} hours last month.", "Two thesis deadlines fall in the same month."),
                options=(
                    _option("cap each group at ten hours a week on the {instrument}", "Cap {instrument} bookings at ten hours per group per week.",
                            pros=("Nobody can block the whole week again.",), cons=("Long overnight runs don't fit in ten hours.",),
                            tasks=("set the booking cap in the calendar system",)),
                    _option("give thesis students priority on the {instrument} until the deadlines", "Give thesis students priority on the {instrument} until their deadlines.",
                            pros=("A missed thesis deadline costs a year.",), cons=("Everyone else's projects stall for a month.",),
                            tasks=("collect the thesis deadlines from each group",)),
                ),
                tasks=("write the booking rules on the lab wiki",),
            ),
            _issue(
                asks=("whether we repair or replace the {instrument}", "what to do about the failing {instrument}"),
                facts=("The repair quote is a third of a new one.", "The remaining {grant} on the equipment grant has to be spent this year."),
                options=(
                    _option("repair the {instrument} under the service contract", "Repair the existing {instrument} under the service contract.",
                            pros=("It's back in three weeks.",), cons=("The same part failed eight months ago.",),
                            tasks=("book the service engineer visit",)),
                    _option("replace the {instrument} from the equipment grant", "Replace the {instrument} using the equipment grant.",
                            pros=("A new one is faster and still under warranty.",), cons=("Procurement takes at least four months.",),
                            tasks=("start the procurement request for a new {instrument}",)),
                ),
            ),
        ),
    ),
)
