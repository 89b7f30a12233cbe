/**
 * The built-in taxonomy of the synthetic platform: 120 topical interest clusters of a short-video platform, grouped
 * under 12 domains, each with a keyword description in the style the papers use ("baking, desserts, pastry").
 *
 * Cluster appearance is part of drift, so some clusters are not always there:
 * - *seasonal* clusters exist only in their calendar months (christmas in Nov-Dec, world cup in Jun-Jul...);
 * - *launched* clusters appear from a month offset after the world's start (a new game, a new app trend) and stay.
 *
 * Ids are stable, lowercase and readable: they end up in tables, prompts and reports.
 *
 * @example
 * const clusters = buildTaxonomy({ clustersPerDomain: 10 });
 * clusters[0]; // { id: "baking", description: "baking, desserts, pastry", domain: "food", ... }
 */
import type { Cluster } from "../../domain/types.js";

export interface SyntheticCluster extends Cluster {
  readonly domain: string;
  /** Description keywords, used for item titles. */
  readonly keywords: readonly string[];
  /** Calendar months (1-12) in which the cluster exists; absent means all year. */
  readonly season?: readonly number[];
  /** Months after the world's start before the cluster appears; absent means from the start. */
  readonly launchOffsetMonths?: number;
}

interface ClusterSpec {
  id: string;
  description: string;
  season?: number[];
  launch?: number;
}

interface DomainSpec {
  domain: string;
  clusters: ClusterSpec[];
}

const c = (id: string, description: string, extra: { season?: number[]; launch?: number } = {}): ClusterSpec => ({
  id,
  description,
  ...extra,
});

/** Ordered so that the first clusters of each domain are evergreen: `clustersPerDomain` below 10 keeps those. */
const DOMAINS: readonly DomainSpec[] = [
  {
    domain: "food",
    clusters: [
      c("baking", "baking, desserts, pastry"),
      c("street-food", "street food, food stalls, night markets"),
      c("quick-recipes", "quick recipes, weeknight dinners, one pan meals"),
      c("vegan-cooking", "vegan cooking, plant based, tofu recipes"),
      c("bbq-grilling", "barbecue, grilling, smoked meat"),
      c("coffee", "coffee, espresso, latte art"),
      c("food-reviews", "restaurant reviews, food critics, tasting menus"),
      c("asian-cuisine", "asian cuisine, ramen, dumplings"),
      c("thanksgiving-recipes", "thanksgiving recipes, roast turkey, pumpkin pie", { season: [11] }),
      c("protein-desserts", "protein desserts, high protein snacks, macro friendly", { launch: 6 }),
    ],
  },
  {
    domain: "fitness",
    clusters: [
      c("home-workouts", "home workouts, bodyweight training, no equipment"),
      c("weightlifting", "weightlifting, powerlifting, strength training"),
      c("running", "running, marathon training, trail running"),
      c("yoga", "yoga, stretching, mobility"),
      c("nutrition", "nutrition, meal prep, healthy eating"),
      c("calisthenics", "calisthenics, street workout, pull ups"),
      c("cycling", "cycling, road bikes, bike commuting"),
      c("martial-arts", "martial arts, boxing, self defense"),
      c("new-year-fitness", "new year resolutions, fitness goals, habit tracking", { season: [1, 2] }),
      c("pilates-reformer", "pilates, reformer classes, core strength", { launch: 4 }),
    ],
  },
  {
    domain: "gaming",
    clusters: [
      c("fps-games", "shooter games, first person, competitive aim"),
      c("minecraft", "minecraft, sandbox building, redstone"),
      c("rpg-games", "role playing games, fantasy quests, open world"),
      c("speedruns", "speedruns, glitches, world records"),
      c("mobile-games", "mobile games, casual puzzles, gacha"),
      c("retro-gaming", "retro gaming, arcade classics, emulators"),
      c("esports", "esports, tournaments, pro players"),
      c("indie-games", "indie games, pixel art, hidden gems"),
      c("battle-royale-launch", "new battle royale, season one, launch gameplay", { launch: 5 }),
      c("handheld-pc", "handheld gaming pc, portable consoles, performance tuning", { launch: 8 }),
    ],
  },
  {
    domain: "music",
    clusters: [
      c("guitar", "guitar lessons, riffs, acoustic covers"),
      c("hip-hop", "hip hop, rap battles, freestyle"),
      c("pop-music", "pop music, chart hits, music videos"),
      c("classical-music", "classical music, orchestra, piano recitals"),
      c("music-production", "music production, beat making, synthesizers"),
      c("kpop", "k-pop, idol groups, dance practice"),
      c("singing", "singing, vocal coaching, karaoke"),
      c("edm", "electronic dance music, dj sets, festivals"),
      c("summer-festivals", "summer music festivals, live stages, festival outfits", { season: [6, 7, 8] }),
      c("dance-challenge", "viral dance challenge, choreography trends, duets", { launch: 2 }),
    ],
  },
  {
    domain: "comedy",
    clusters: [
      c("standup", "stand-up comedy, comedians, crowd work"),
      c("sketch-comedy", "sketch comedy, parody, characters"),
      c("pranks", "pranks, hidden camera, reactions"),
      c("memes", "memes, internet culture, viral trends"),
      c("fails", "fail compilations, funny accidents, bloopers"),
      c("office-humor", "office humor, work life, corporate satire"),
      c("animal-comedy", "funny animals, pet fails, cute chaos"),
      c("improv", "improv, comedy games, unscripted"),
      c("april-fools", "april fools, harmless pranks, fake announcements", { season: [4] }),
      c("ai-comedy", "ai generated comedy, absurd videos, synthetic skits", { launch: 7 }),
    ],
  },
  {
    domain: "sports",
    clusters: [
      c("football-soccer", "soccer, football highlights, goals"),
      c("basketball", "basketball, dunks, playoff highlights"),
      c("tennis", "tennis, grand slams, rallies"),
      c("formula-one", "formula one, racing, pit stops"),
      c("skateboarding", "skateboarding, skate parks, tricks"),
      c("golf", "golf, swing tips, course vlogs"),
      c("extreme-sports", "extreme sports, base jumping, surfing big waves"),
      c("american-football", "american football, touchdowns, draft picks"),
      c("world-cup", "world cup, national teams, penalty shootouts", { season: [6, 7] }),
      c("pickleball", "pickleball, paddle sports, doubles rallies", { launch: 4 }),
    ],
  },
  {
    domain: "travel",
    clusters: [
      c("city-guides", "city guides, hidden spots, walking tours"),
      c("hiking", "hiking, mountain trails, backpacking"),
      c("van-life", "van life, road trips, camper conversions"),
      c("budget-travel", "budget travel, cheap flights, hostels"),
      c("luxury-travel", "luxury travel, resorts, first class"),
      c("camping", "camping, campfire cooking, tents"),
      c("island-beaches", "island beaches, snorkeling, tropical resorts"),
      c("travel-hacks", "travel hacks, packing tips, airport tricks"),
      c("summer-travel", "summer travel, beach holidays, vacation planning", { season: [6, 7, 8] }),
      c("ski-season", "ski season, snowboarding, mountain resorts", { season: [12, 1, 2, 3] }),
    ],
  },
  {
    domain: "tech",
    clusters: [
      c("smartphones", "smartphones, unboxing, phone reviews"),
      c("pc-building", "pc building, graphics cards, custom rigs"),
      c("programming", "programming, coding tutorials, software engineering"),
      c("space", "space, rockets, astronomy"),
      c("gadgets", "gadgets, smart home, tech deals"),
      c("electric-cars", "electric cars, charging, ev reviews"),
      c("science-experiments", "science experiments, chemistry, physics demos"),
      c("cybersecurity", "cybersecurity, hacking explained, privacy"),
      c("ai-tools", "ai tools, chatbots, productivity automation", { launch: 3 }),
      c("foldable-phones", "foldable phones, flip screens, durability tests", { launch: 9 }),
    ],
  },
  {
    domain: "style",
    clusters: [
      c("makeup", "makeup tutorials, beauty looks, cosmetics"),
      c("skincare", "skincare, routines, dermatology tips"),
      c("streetwear", "streetwear, sneakers, outfit drops"),
      c("hairstyles", "hairstyles, braids, haircuts"),
      c("thrifting", "thrifting, vintage fashion, secondhand hauls"),
      c("nail-art", "nail art, manicures, nail designs"),
      c("mens-fashion", "men's fashion, tailoring, grooming"),
      c("fashion-week", "fashion week, runway shows, designers"),
      c("halloween-costumes", "halloween costumes, spooky makeup, trick or treat", { season: [10] }),
      c("valentines", "valentine's day, date ideas, romantic gifts", { season: [2] }),
    ],
  },
  {
    domain: "home",
    clusters: [
      c("interior-design", "interior design, room makeovers, decor"),
      c("diy-repairs", "home repairs, diy fixes, tools"),
      c("gardening", "gardening, houseplants, vegetable beds"),
      c("cleaning", "cleaning hacks, organizing, satisfying cleaning"),
      c("woodworking", "woodworking, furniture making, carpentry"),
      c("tiny-houses", "tiny houses, small space living, cabins"),
      c("real-estate", "real estate, house tours, mortgages"),
      c("parenting", "parenting, toddlers, family life"),
      c("christmas", "christmas decorations, gift ideas, holiday lights", { season: [11, 12] }),
      c("spring-gardening", "spring planting, seed starting, flower gardens", { season: [3, 4, 5] }),
    ],
  },
  {
    domain: "nature",
    clusters: [
      c("dogs", "dogs, puppy training, dog breeds"),
      c("cats", "cats, kittens, cat behavior"),
      c("wildlife", "wildlife, safari, animal documentaries"),
      c("aquariums", "aquariums, fish keeping, aquascaping"),
      c("birds", "birdwatching, parrots, bird calls"),
      c("farm-life", "farm life, chickens, homesteading"),
      c("ocean-life", "ocean life, sharks, coral reefs"),
      c("reptiles", "reptiles, snakes, lizards"),
      c("back-to-school", "back to school, school supplies, study routines", { season: [8, 9] }),
      c("autumn-foliage", "autumn leaves, fall colors, cozy walks", { season: [10, 11] }),
    ],
  },
  {
    domain: "learning",
    clusters: [
      c("personal-finance", "personal finance, budgeting, saving money"),
      c("investing", "investing, stocks, index funds"),
      c("history", "history, ancient civilizations, historical facts"),
      c("languages", "language learning, vocabulary, accents"),
      c("psychology", "psychology, behavior, mental health"),
      c("true-crime", "true crime, mysteries, cold cases"),
      c("book-reviews", "book reviews, reading lists, booktok"),
      c("drawing", "drawing, sketching, digital art"),
      c("tax-season", "tax season, tax returns, deductions", { season: [3, 4] }),
      c("election-news", "election coverage, debates, political explainers", { launch: 9 }),
    ],
  },
];

export interface TaxonomyOptions {
  /**
   * Clusters kept per domain (the first N in each domain's list; the seasonal and launched ones are listed last).
   * Above 10, format variants of the domain's evergreen clusters are added ("..., beginner guides"), up to 25 per
   * domain (300 clusters), for scale tests of tables that grow with the square of the cluster count.
   * @defaultValue 10
   */
  clustersPerDomain?: number;
}

/** Formats that turn an evergreen cluster into a distinct, still readable variant. */
const VARIANT_FORMATS = ["beginner guides", "live streams", "deep dives"] as const;

/** The taxonomy, in a stable order (domain by domain). */
export function buildTaxonomy(options: TaxonomyOptions = {}): SyntheticCluster[] {
  const perDomain = options.clustersPerDomain ?? 10;
  const out: SyntheticCluster[] = [];
  for (const d of DOMAINS) {
    const evergreen = d.clusters.filter((c) => !c.season && c.launch === undefined);
    const variants = Array.from({ length: Math.max(0, perDomain - d.clusters.length) }, (_, k) => {
      const base = evergreen[k % evergreen.length];
      const format = VARIANT_FORMATS[Math.floor(k / evergreen.length) % VARIANT_FORMATS.length];
      return { id: `${base.id}-${format.replace(/ /g, "-")}`, description: `${base.description}, ${format}` };
    });
    for (const spec of [...d.clusters.slice(0, perDomain), ...variants] as typeof d.clusters) {
      out.push({
        id: spec.id,
        description: spec.description,
        domain: d.domain,
        keywords: spec.description.split(",").map((k) => k.trim()),
        ...(spec.season ? { season: spec.season } : {}),
        ...(spec.launch !== undefined ? { launchOffsetMonths: spec.launch } : {}),
      });
    }
  }
  return out;
}

/** Domain names in taxonomy order. */
export const SYNTHETIC_DOMAINS: readonly string[] = DOMAINS.map((d) => d.domain);

/**
 * Whether a cluster exists in the month that starts at `monthStartMs`, given the world's month index of that month.
 * Months are UTC calendar months.
 */
export function clusterActive(cluster: SyntheticCluster, monthIndex: number, monthStartMs: number): boolean {
  if (cluster.launchOffsetMonths !== undefined && monthIndex < cluster.launchOffsetMonths) return false;
  if (cluster.season) {
    const calendarMonth = new Date(monthStartMs).getUTCMonth() + 1;
    return cluster.season.includes(calendarMonth);
  }
  return true;
}

const TITLE_TEMPLATES: readonly string[] = [
  "{K} for beginners",
  "The best {k} of the week",
  "{K} in 60 seconds",
  "Why everyone is talking about {k}",
  "{K}: what nobody tells you",
  "My first try at {k}",
  "{K} challenge, day {n}",
  "Top 5 {k} moments",
  "{K} mistakes to avoid",
  "Rating {k} so you don't have to",
  "A day of {k}",
  "{K} explained simply",
  "Honest take on {k}",
  "{K} tier list",
  "I tried {k} for a week",
  "{K} that changed my mind",
];

/** A readable title for the `n`-th item of a cluster, built from its keywords (deterministic). */
export function itemTitle(cluster: SyntheticCluster, n: number, hash: number): string {
  const keyword = cluster.keywords[hash % cluster.keywords.length];
  const template = TITLE_TEMPLATES[(hash >>> 8) % TITLE_TEMPLATES.length];
  const cap = keyword.charAt(0).toUpperCase() + keyword.slice(1);
  return template
    .replace("{K}", cap)
    .replace("{k}", keyword)
    .replace("{n}", String(1 + (n % 30)));
}
