"""Seeded synthetic biographies: one short biography per person, one question about one person.

Each sample has ``k`` persons (``k`` drawn from ``[min_documents, max_documents]``, or fixed by
``num_documents``). Each person gets one document of a few sentences (about 50-90 words,
60-120 tokens) stating 4-6 of seven attributes (birth date, birth city, university, major,
employer, job title, hobby) in varied sentence templates. The question asks for one attribute
of one person; the answer is that attribute's value. Within a sample, the persons' values of the
asked attribute are all different, so the question can only be answered from the right document.

Train/eval separation
---------------------
* The RNG stream is derived from ``("biography", split, seed)``, so ``"train"`` and ``"eval"``
  draw different samples for the same seed.
* First names are partitioned by split: even positions of each first-name pool are used by
  ``"train"``, odd positions by ``"eval"``. No full name of an eval person can therefore appear
  in any train sample, for every seed.

Examples
--------
>>> ds = build_biography(split="eval", num_samples=3, seed=0)
>>> ds.column_names
['id', 'task', 'documents', 'question', 'answers', 'source_index']
>>> row = ds[0]
>>> row["answers"][0] in " ".join(row["documents"])
True
"""

from __future__ import annotations

import dataclasses
import random
from typing import TYPE_CHECKING, Any

from hf_kvpacket.evaluation.schema import (
    SYNTHETIC_INDEX,
    Row,
    check_num_samples,
    check_split,
    make_rng,
    rows_to_dataset,
)

if TYPE_CHECKING:  # pragma: no cover
    import datasets

TASK = "biography"

# --------------------------------------------------------------------------------------------
# Pools. First names are split by position parity (train: even, eval: odd).
# --------------------------------------------------------------------------------------------

MALE_FIRST_NAMES: tuple[str, ...] = (
    "Aaron", "Abel", "Adrian", "Alden", "Alistair", "Ambrose", "Anders", "Anselm", "Archer", "Arlo",
    "Armand", "Arvid", "August", "Barnaby", "Basil", "Benedict", "Bertram", "Blaise", "Boris", "Bram",
    "Brendan", "Caspian", "Cedric", "Cillian", "Clement", "Conrad", "Cormac", "Cyrus", "Dalton", "Damian",
    "Darius", "Declan", "Desmond", "Dorian", "Edmund", "Elias", "Emeric", "Emil", "Ephraim", "Errol",
    "Evander", "Ezra", "Felix", "Fergus", "Finnian", "Florian", "Gideon", "Godfrey", "Gregor", "Gustav",
    "Hadrian", "Hamish", "Harlan", "Horace", "Hugo", "Ignatius", "Ivo", "Jasper", "Joachim", "Julian",
    "Kasimir", "Keegan", "Lazarus", "Leander", "Leopold", "Linus", "Lorcan", "Lucian", "Magnus", "Malcolm",
    "Marius", "Matthias", "Maximilian", "Milo", "Mordecai", "Nikolai", "Oberon", "Octavian", "Orson", "Osric",
    "Otto", "Percival", "Phineas", "Quentin", "Rafferty", "Reinhold", "Rowan", "Rufus", "Rupert", "Silas",
    "Soren", "Stellan", "Tancred", "Thaddeus", "Tobias", "Ulric", "Valentin", "Wendell", "Xavier", "Zoltan",
    "Ansel", "Bastian", "Cassius", "Dmitri", "Eamon", "Fabian", "Galen", "Hector", "Isidore", "Jarrah",
)

FEMALE_FIRST_NAMES: tuple[str, ...] = (
    "Adela", "Agatha", "Alina", "Amara", "Annika", "Ariadne", "Astrid", "Aurelia", "Beatrix", "Bettina",
    "Blythe", "Briony", "Calla", "Camilla", "Cassia", "Celeste", "Clementine", "Cordelia", "Daphne", "Delphine",
    "Dagny", "Edith", "Eira", "Elodie", "Elspeth", "Esme", "Eulalia", "Fenella", "Fiora", "Freya",
    "Gemma", "Georgina", "Greta", "Gwendolyn", "Hattie", "Helena", "Henrietta", "Hermione", "Ilse", "Imogen",
    "Ingrid", "Isadora", "Ivy", "Jocasta", "Juno", "Kaia", "Katrin", "Leonie", "Liesel", "Linnea",
    "Lorelei", "Lucasta", "Mabel", "Maren", "Marguerite", "Matilda", "Minerva", "Mirabel", "Nadia", "Nerys",
    "Noemi", "Odette", "Ophelia", "Orla", "Ottilie", "Paloma", "Perpetua", "Petra", "Philippa", "Priya",
    "Quilla", "Rosalind", "Roxana", "Sabine", "Saoirse", "Selma", "Seraphina", "Sigrid", "Solveig", "Sunniva",
    "Tamsin", "Theodora", "Thora", "Ulla", "Una", "Valeria", "Verity", "Vesna", "Wilhelmina", "Winifred",
    "Xanthe", "Yara", "Ysolde", "Zelda", "Zinnia", "Anouk", "Brigid", "Colette", "Dorothea", "Elowen",
    "Faustine", "Genevieve", "Honora", "Isolde", "Jessamy", "Kerensa", "Lavinia", "Marisol", "Nell", "Oriana",
)

LAST_NAMES: tuple[str, ...] = (
    "Abernathy", "Ackerley", "Ainsworth", "Albrecht", "Alcott", "Ashdown", "Atwater", "Bancroft", "Barlowe",
    "Beaumont", "Belcourt", "Blackwood", "Blakemore", "Bramwell", "Brightman", "Brockhurst", "Calloway",
    "Carrington", "Castellan", "Chamberlain", "Chatterton", "Cheswick", "Colquhoun", "Corrigan", "Crane",
    "Cresswell", "Dalgleish", "Darrow", "Davenport", "Delacroix", "Dunmore", "Eastwood", "Edgerton",
    "Ellsworth", "Everhart", "Fairbanks", "Falkner", "Farrington", "Fenwick", "Fitzgerald", "Fleming",
    "Forsythe", "Galbraith", "Garrick", "Gillingham", "Glendower", "Goodfellow", "Greenhalgh", "Hallowell",
    "Halvorsen", "Hargreaves", "Hartwell", "Hawthorne", "Heathcote", "Holloway", "Huxley", "Ingleby",
    "Ironside", "Jardine", "Kavanagh", "Kendrick", "Kingsley", "Kirkpatrick", "Lachance", "Langford",
    "Larkspur", "Latimer", "Lindqvist", "Lockhart", "Lowell", "Lyndon", "Macallister", "Mallory",
    "Marchetti", "Merriweather", "Montague", "Moorcroft", "Mortensen", "Nakamura", "Newbury", "Northcott",
    "Oakley", "Okonkwo", "Ollivant", "Ormsby", "Pemberton", "Pendleton", "Pennington", "Quartermaine",
    "Radcliffe", "Ramsbottom", "Ravenscroft", "Redgrave", "Rothwell", "Rutherford", "Saltonstall", "Sandoval",
    "Selwyn", "Shackleton", "Sinclair", "Sterling", "Stoneham", "Strickland", "Sutherland", "Talbot",
    "Thackeray", "Thornbury", "Trelawney", "Tremaine", "Underhill", "Upton", "Vance", "Vandermeer",
    "Villiers", "Wainwright", "Wakefield", "Waverley", "Westbrook", "Whitcombe", "Wilberforce", "Winslow",
    "Woodhouse", "Wycliffe", "Yardley", "Yelverton", "Zabriskie", "Zeller", "Achterberg", "Bergstrom",
    "Cavendish", "Drummond", "Esterhazy", "Fontaine", "Grimaldi", "Hollister", "Ivanova", "Jablonski",
    "Kowalczyk", "Lindgren", "Moreau", "Novak", "Oyelaran", "Petrakis", "Quiroga", "Rasmussen", "Szabo",
    "Takahashi", "Umberto", "Varga", "Wozniak", "Yamamoto", "Zielinski", "Abara", "Bhattacharya", "Castillo",
    "Delgado", "Eriksen", "Ferreira", "Gallagher", "Haddad", "Iwasaki", "Jovanovic", "Kaminski", "Lombardi",
    "Mbeki", "Nilsson", "Ortega", "Pellegrini", "Qureshi", "Romanov", "Salazar", "Tanaka", "Ueda",
    "Valdez", "Whitaker", "Xiong", "Yilmaz", "Zapata", "Arkwright", "Bellweather", "Coldwell", "Dewhurst",
    "Elphinstone", "Foxworth", "Gatling", "Hornblower", "Inchbald", "Jessop", "Kettering", "Loxley",
)

CITIES: tuple[str, ...] = (
    "Aberdeen", "Adelaide", "Amsterdam", "Ankara", "Antwerp", "Asuncion", "Athens", "Auckland", "Austin",
    "Baltimore", "Bangalore", "Barcelona", "Belfast", "Belgrade", "Bergen", "Bilbao", "Bogota", "Bologna",
    "Bordeaux", "Boston", "Bratislava", "Bremen", "Brisbane", "Bristol", "Brno", "Brussels", "Bucharest",
    "Budapest", "Cairo", "Calgary", "Cape Town", "Cardiff", "Cartagena", "Casablanca", "Chennai", "Chicago",
    "Cologne", "Copenhagen", "Cork", "Curitiba", "Dakar", "Dallas", "Denver", "Dresden", "Dublin", "Dundee",
    "Durban", "Edinburgh", "Eindhoven", "Florence", "Fukuoka", "Gdansk", "Geneva", "Genoa", "Ghent",
    "Glasgow", "Gothenburg", "Granada", "Graz", "Groningen", "Guadalajara", "Hamburg", "Hanoi", "Hanover",
    "Havana", "Helsinki", "Hobart", "Honolulu", "Innsbruck", "Istanbul", "Jakarta", "Kaunas", "Kingston",
    "Krakow", "Kyoto", "Lagos", "Leeds", "Leipzig", "Lille", "Lima", "Lisbon", "Ljubljana", "Lyon",
    "Madrid", "Malmo", "Manchester", "Marseille", "Medellin", "Melbourne", "Milan", "Minsk", "Montevideo",
    "Montreal", "Mumbai", "Munich", "Nagoya", "Nairobi", "Nantes", "Naples", "Nashville", "Nice",
    "Oslo", "Osaka", "Ottawa", "Oxford", "Palermo", "Perth", "Philadelphia", "Pittsburgh", "Porto",
    "Prague", "Quebec City", "Quito", "Reykjavik", "Riga", "Rotterdam", "Salzburg", "San Diego",
    "Santiago", "Sapporo", "Seattle", "Seville", "Sheffield", "Sofia", "Stockholm", "Strasbourg",
    "Stuttgart", "Sydney", "Tallinn", "Tampere", "Tbilisi", "Thessaloniki", "Toronto", "Toulouse",
    "Trieste", "Tunis", "Turin", "Utrecht", "Valencia", "Valparaiso", "Vancouver", "Venice", "Verona",
    "Vienna", "Vilnius", "Warsaw", "Wellington", "Winnipeg", "Wroclaw", "Yokohama", "Zagreb", "Zurich",
)

UNIVERSITIES: tuple[str, ...] = (
    "Ashford University", "Barrowfield College", "Bellmont Institute of Technology", "Briarwood University",
    "Calderon University", "Carrick State University", "Cedar Hollow College", "Clearwater University",
    "Coldbrook Polytechnic", "Crestview University", "Dunhaven University", "Eastmere College",
    "Elmstead University", "Fairhaven Institute", "Fernhill University", "Foxmoor College",
    "Glenwood University", "Greystone Polytechnic", "Halcyon University", "Harrowgate College",
    "Highcliff University", "Hollins Bay University", "Ironwood Institute", "Juniper Ridge University",
    "Kestrel University", "Kingsbridge College", "Lakemont University", "Larchfield Institute",
    "Linden Vale University", "Lockwood College", "Marlow University", "Meadowbrook Institute",
    "Millbrook University", "Northgate University", "Oakhaven College", "Ormond Institute of Science",
    "Pinecrest University", "Queensmere College", "Ravenswood University", "Redfern Polytechnic",
    "Riverton University", "Rosemoor College", "Saltmarsh University", "Silverlake Institute",
    "Southwick University", "Stonebridge College", "Summerfield University", "Thornfield Institute",
    "Upland State University", "Valemont University", "Westhaven Polytechnic", "Whitmore College",
    "Willowmere University", "Windham Institute", "Wolcott University", "Yarrow Point College",
    "Alderney University", "Blackthorn College", "Copperfield University", "Driftwood Institute",
    "Emberly University", "Falconridge College", "Goldcrest University", "Heatherton Institute",
)

MAJORS: tuple[str, ...] = (
    "aerospace engineering", "anthropology", "applied mathematics", "archaeology", "architecture",
    "musicology", "astronomy", "genetics", "bioinformatics", "biomedical engineering", "botany",
    "chemical engineering", "chemistry", "civil engineering", "classics", "cognitive science",
    "comparative literature", "computer science", "criminology", "data science", "economics",
    "electrical engineering", "environmental science", "epidemiology", "film studies", "finance",
    "geography", "geology", "graphic design", "history", "industrial design", "international relations",
    "journalism", "linguistics", "marine biology", "materials science", "mechanical engineering",
    "microbiology", "music composition", "nursing", "oceanography", "pharmacology", "philosophy",
    "physics", "political science", "psychology", "public health", "robotics", "sociology", "statistics",
    "theater arts", "urban planning", "veterinary science", "zoology", "accounting", "agronomy",
)

COMPANIES: tuple[str, ...] = (
    "Altura Systems", "Amberline Logistics", "Apex Meridian", "Arclight Labs", "Aurora Biotech",
    "Bluefin Analytics", "Boreal Energy", "Brightwater Foods", "Cascade Robotics", "Cinderpeak Games",
    "Clearpath Insurance", "Cobalt Harbor Shipping", "Copperleaf Media", "Coral Ridge Pharma",
    "Crescent Aeronautics", "Crystalline Semiconductors", "Deepwell Mining", "Driftline Software",
    "Ember & Oak Furniture", "Evergreen Textiles", "Falconer Security", "Fernway Publishing",
    "Firefly Optics", "Foxglove Cosmetics", "Frostgate Cloud", "Galeforce Wind Power", "Garnet Financial",
    "Glasshouse Architects", "Granite Peak Construction", "Greenhollow Farms", "Halberd Defense",
    "Harborlight Hotels", "Helix Genomics", "Highmark Telecom", "Hollowbrook Brewing", "Indigo Fabrics",
    "Ironbark Tools", "Ivory Tower Consulting", "Jadeite Ceramics", "Juniper Health", "Keystone Rail",
    "Kingfisher Airlines", "Lanternfish Marine", "Lyrebird Audio", "Lodestar Navigation", "Lumen Circuits",
    "Maplecrest Bank", "Marigold Bakeries", "Meridian Water", "Mistral Motors", "Moonstone Jewelry",
    "Nettle & Finch Legal", "Nimbus Data", "Northstar Outfitters", "Oakmoss Perfumery", "Obsidian Forge",
    "Onyx Pharmaceuticals", "Orchid Bioscience", "Osprey Drones", "Palisade Capital", "Paragon Plastics",
    "Pinnacle Elevators", "Quarry Stone Works", "Quicksilver Payments", "Radiant Solar", "Redwood Paper",
    "Riverbend Dairy", "Sable Fashion House", "Saffron Spice Company", "Sapphire Networks",
    "Seabright Aquaculture", "Silverline Trains", "Solstice Travel", "Sparrowhawk Studios",
    "Starling Satellites", "Stonewall Cement", "Summit Medical Devices", "Tamarack Timber",
    "Tidewater Chemicals", "Topaz Electronics", "Trillium Learning", "Umber Coffee Roasters",
    "Vanguard Batteries", "Velvet Thread Apparel", "Verdant Agritech", "Vesper Lighting",
    "Whistler Instruments", "Wildflower Cosmetics", "Willowbank Insurance", "Windrose Shipping",
    "Wolfram Steel", "Yellowstone Outdoor", "Zephyr Climate Systems", "Zigzag Toys",
)

JOB_TITLES: tuple[str, ...] = (
    "accountant", "actuary", "air traffic controller", "interior designer", "art director", "biostatistician",
    "brand strategist", "perfumer", "site engineer", "compliance officer", "copy editor",
    "data engineer", "dental hygienist", "electrician", "environmental consultant", "financial analyst",
    "firmware engineer", "flight instructor", "geologist", "illustrator", "hydrologist",
    "furniture designer", "investment banker", "lab technician", "landscape architect", "librarian",
    "logistics coordinator", "machine learning engineer", "marine surveyor", "maintenance engineer",
    "museum curator", "network administrator", "nurse practitioner", "operations manager", "paralegal",
    "pharmacist", "physical therapist", "product manager", "project manager", "quality inspector",
    "radiologist", "research scientist", "sales director", "sound engineer", "speech therapist",
    "structural engineer", "cartographer", "systems analyst", "technical writer", "translator",
    "urban planner", "user researcher", "veterinarian", "web developer",
)

HOBBIES: tuple[str, ...] = (
    "archery", "astrophotography", "backgammon", "baking sourdough bread", "beekeeping", "birdwatching",
    "bookbinding", "bouldering", "calligraphy", "canoeing", "ceramics", "chess", "competitive swimming",
    "cross-country skiing", "cycling", "embroidery", "fencing", "fly fishing", "foraging mushrooms",
    "gardening", "geocaching", "glassblowing", "hiking", "ice skating", "juggling", "kayaking",
    "knitting", "leathercraft", "marathon running", "model railways", "mountaineering", "origami",
    "painting watercolors", "playing the cello", "playing the harp", "pottery", "quilting",
    "rock climbing", "rowing", "sailing", "scuba diving", "sketching", "snowboarding", "stamp collecting",
    "surfing", "table tennis", "tango dancing", "woodcarving", "writing poetry", "yoga",
)

MONTHS: tuple[str, ...] = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

ATTRIBUTES: tuple[str, ...] = (
    "birth_date", "birth_city", "university", "major", "employer", "job_title", "hobby",
)

# Sentence templates. {ref} is the subject (full name, first name or pronoun), {Ref} capitalised,
# {pos} the possessive pronoun, {Pos_cap} the capitalised possessive ("Ada's" or "Her"),
# {ref_subj} the subject pronoun, {v} the value and {v_a} the value with its article.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_date": (
        "{Ref} was born on {v}.",
        "{Ref} was born on {v} and still celebrates every birthday with family.",
        "{Pos_cap} date of birth is {v}.",
        "{Ref} came into the world on {v}.",
    ),
    "birth_city": (
        "{Ref} was born in {v}.",
        "{Ref} grew up in {v}, the city where {ref_subj} was born.",
        "{Pos_cap} birthplace is {v}.",
        "{Ref} is a native of {v}, where {ref_subj} was born.",
    ),
    "university": (
        "{Ref} studied at {v}.",
        "{Ref} graduated from {v}.",
        "{Ref} attended {v} and completed {pos} degree there.",
        "For {pos} university education, {ref} enrolled at {v}.",
    ),
    "major": (
        "{Ref} majored in {v}.",
        "At university, {ref} chose {v} as {pos} major.",
        "{Pos_cap} major was {v}.",
        "{Ref} earned a degree in {v}.",
    ),
    "employer": (
        "{Ref} works for {v}.",
        "{Ref} is employed by {v}.",
        "These days {ref} works at {v}.",
        "{Pos_cap} current employer is {v}.",
    ),
    "job_title": (
        "{Ref} works as {v_a}.",
        "By profession, {ref} is {v_a}.",
        "{Ref} has built a career as {v_a}.",
        "{Pos_cap} job title is {v}.",
    ),
    "hobby": (
        "In {pos} free time, {ref} enjoys {v}.",
        "{Ref} has a passion for {v}.",
        "{Pos_cap} favorite hobby is {v}.",
        "On weekends, {ref} usually spends hours on {v}.",
    ),
}

_QUESTIONS: dict[str, tuple[str, ...]] = {
    "birth_date": ("What is the birth date of {name}?", "When was {name} born?"),
    "birth_city": ("What is the birth city of {name}?", "In which city was {name} born?"),
    "university": ("Which university did {name} attend?", "Where did {name} study?"),
    "major": ("What did {name} major in?", "What was the major of {name}?"),
    "employer": ("Which company does {name} work for?", "Who is the employer of {name}?"),
    "job_title": ("What is the job title of {name}?", "What does {name} do for a living?"),
    "hobby": ("What is the favorite hobby of {name}?", "Which pastime does {name} enjoy most?"),
}

_OPENINGS: tuple[str, ...] = (
    "This is a short biography of {name}.",
    "The following profile describes {name}.",
    "{name} is the subject of this profile.",
    "Here are some facts about {name}.",
    "This document is about {name}.",
)

_CLOSINGS: tuple[str, ...] = (
    "Friends describe {obj} as patient and curious.",
    "Colleagues say {subj} is generous with {pos} time.",
    "{Subj} lives with a cat named after a famous composer.",
    "{Subj} speaks three languages fluently.",
    "{Subj} volunteers at a community library once a month.",
    "Those who know {obj} say {subj} never forgets a face.",
    "{Subj} keeps a detailed journal of every trip {subj} takes.",
    "Neighbors know {obj} for the vegetable garden behind {pos} house.",
    "{Subj} is saving up for a long journey across South America.",
    "Every winter {subj} reads at least a dozen novels.",
    "{Subj} once ran a small newsletter about local history.",
    "Most mornings {subj} starts the day with a long walk.",
)


@dataclasses.dataclass(frozen=True)
class BiographyConfig:
    """Settings of the biography generator.

    Parameters
    ----------
    num_documents : int or None
        Persons (documents) per sample; ``None`` draws it from ``[min_documents, max_documents]``.
    min_documents, max_documents : int
        Range of persons per sample when ``num_documents`` is ``None``.
    min_attributes, max_attributes : int
        Attributes stated per person (out of the seven in :data:`ATTRIBUTES`).

    Examples
    --------
    >>> BiographyConfig(num_documents=4).num_documents
    4
    """

    num_documents: int | None = None
    min_documents: int = 2
    max_documents: int = 8
    min_attributes: int = 4
    max_attributes: int = 6

    def __post_init__(self) -> None:
        if self.num_documents is not None and self.num_documents < 1:
            raise ValueError(f"num_documents must be >= 1, got {self.num_documents}.")
        if not 1 <= self.min_documents <= self.max_documents:
            raise ValueError(
                f"need 1 <= min_documents <= max_documents, got {self.min_documents}, {self.max_documents}."
            )
        if not 1 <= self.min_attributes <= self.max_attributes <= len(ATTRIBUTES):
            raise ValueError(f"need 1 <= min_attributes <= max_attributes <= {len(ATTRIBUTES)}.")
        most = self.num_documents or self.max_documents
        if most > 40:
            raise ValueError(f"at most 40 persons per sample (value pools are finite), got {most}.")


def first_names(split: str, gender: str) -> tuple[str, ...]:
    """First names reserved for ``split`` (train: even positions of the pool, eval: odd).

    Examples
    --------
    >>> set(first_names("train", "female")).isdisjoint(first_names("eval", "female"))
    True
    """
    check_split(split)
    pool = MALE_FIRST_NAMES if gender == "male" else FEMALE_FIRST_NAMES
    return pool[0::2] if split == "train" else pool[1::2]


def _with_article(noun: str) -> str:
    """``"architect"`` -> ``"an architect"``, ``"chemist"`` -> ``"a chemist"``."""
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _random_date(rng: random.Random) -> str:
    month = rng.randrange(12)
    day = rng.randint(1, _DAYS_IN_MONTH[month])
    year = rng.randint(1940, 2004)
    return f"{MONTHS[month]} {day}, {year}"


def _render_person(rng: random.Random, person: dict[str, Any], attributes: list[str]) -> str:
    name, first = person["name"], person["first"]
    subj, obj, pos = ("he", "him", "his") if person["gender"] == "male" else ("she", "her", "her")
    sentences = [rng.choice(_OPENINGS).format(name=name)]
    order = list(attributes)
    rng.shuffle(order)
    for i, attribute in enumerate(order):
        template = rng.choice(_TEMPLATES[attribute])
        # First attribute sentence names the person; later ones use first name or pronoun.
        ref = name if i == 0 else rng.choice((first, subj, subj))
        value = person[attribute]
        sentences.append(
            template.format(
                Ref=ref[0].upper() + ref[1:],
                ref=ref,
                ref_subj=subj,
                pos=pos,
                Pos_cap=(f"{ref}'s" if ref != subj else pos.capitalize()),
                v=value,
                v_a=_with_article(value),
            )
        )
    for closing in rng.sample(_CLOSINGS, rng.randint(1, 2)):
        sentences.append(closing.format(subj=subj, Subj=subj.capitalize(), obj=obj, pos=pos))
    return " ".join(sentences)


_VALUE_POOLS: dict[str, tuple[str, ...]] = {
    "birth_city": CITIES,
    "university": UNIVERSITIES,
    "major": MAJORS,
    "employer": COMPANIES,
    "job_title": JOB_TITLES,
    "hobby": HOBBIES,
}


def _draw_sample(
    rng: random.Random, config: BiographyConfig, names: dict[str, tuple[str, ...]]
) -> tuple[list[str], str, str]:
    """Draw one sample: (documents, question, answer)."""
    k = config.num_documents or rng.randint(config.min_documents, config.max_documents)
    # Distinct first names and distinct last names: no two persons of a sample can be confused.
    genders = [rng.choice(("male", "female")) for _ in range(k)]
    chosen_first = {g: rng.sample(names[g], genders.count(g)) for g in ("male", "female")}
    last = rng.sample(LAST_NAMES, k)
    # Distinct values per attribute: the asked value identifies one person only.
    values = {attribute: rng.sample(pool, k) for attribute, pool in _VALUE_POOLS.items()}
    dates: list[str] = []
    while len(dates) < k:
        date = _random_date(rng)
        if date not in dates:
            dates.append(date)
    values["birth_date"] = dates
    persons = []
    counters = {"male": 0, "female": 0}
    for i, gender in enumerate(genders):
        first = chosen_first[gender][counters[gender]]
        counters[gender] += 1
        person = {"first": first, "name": f"{first} {last[i]}", "gender": gender}
        person.update({attribute: values[attribute][i] for attribute in ATTRIBUTES})
        persons.append(person)
    target = rng.randrange(k)
    asked = rng.choice(ATTRIBUTES)
    documents = []
    for i, person in enumerate(persons):
        count = rng.randint(config.min_attributes, config.max_attributes)
        attributes = rng.sample(ATTRIBUTES, count)
        if i == target and asked not in attributes:
            attributes[rng.randrange(count)] = asked
        documents.append(_render_person(rng, person, attributes))
    question = rng.choice(_QUESTIONS[asked]).format(name=persons[target]["name"])
    return documents, question, persons[target][asked]


def generate_biography_rows(
    split: str = "eval", num_samples: int = 100, seed: int = 42, config: BiographyConfig | None = None
) -> list[Row]:
    """Generate biography rows as plain dicts (see :func:`build_biography`).

    Examples
    --------
    >>> rows = generate_biography_rows("train", 2, seed=1, config=BiographyConfig(num_documents=3))
    >>> [len(r["documents"]) for r in rows]
    [3, 3]
    """
    check_split(split)
    config = config or BiographyConfig()
    if num_samples is None:
        raise ValueError(f"{TASK!r} is synthetic: pass num_samples (an int), not None.")
    num_samples = check_num_samples(num_samples, num_samples, TASK, split)
    rng = make_rng(TASK, split, seed)
    names = {gender: first_names(split, gender) for gender in ("male", "female")}
    rows: list[Row] = []
    for n in range(num_samples):
        while True:  # redraw the rare sample whose answer string also occurs in another document
            documents, question, answer = _draw_sample(rng, config, names)
            if sum(answer in document for document in documents) == 1:
                break
        rows.append(
            {
                "id": f"{TASK}-{split}-s{seed}-{n:06d}",
                "task": TASK,
                "documents": documents,
                "question": question,
                "answers": [answer],
                "source_index": SYNTHETIC_INDEX,
            }
        )
    return rows


def build_biography(
    split: str = "eval", num_samples: int = 100, seed: int = 42, **kwargs: Any
) -> "datasets.Dataset":
    """Build the synthetic multi-biography QA dataset.

    Parameters
    ----------
    split : {"train", "eval"}
        Which stream (and which half of the first-name pools) to use.
    num_samples : int
        Rows to generate.
    seed : int
        Seed; the same ``(split, seed)`` always gives the same rows.
    **kwargs
        Fields of :class:`BiographyConfig` (e.g. ``num_documents=4``).

    Returns
    -------
    datasets.Dataset
        Rows with the schema of :mod:`hf_kvpacket.evaluation.schema`; ``source_index`` is ``-1``.

    Examples
    --------
    >>> ds = build_biography("train", num_samples=2, seed=7, num_documents=5)
    >>> len(ds[0]["documents"])
    5
    """
    return rows_to_dataset(generate_biography_rows(split, num_samples, seed, BiographyConfig(**kwargs)))


__all__ = [
    "TASK",
    "ATTRIBUTES",
    "BiographyConfig",
    "first_names",
    "generate_biography_rows",
    "build_biography",
]
