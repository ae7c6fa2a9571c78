"""Emoji names -> short English class words, and the long-tailed (Zipf) class weights.

Rules: keep concrete things (animals, food, objects, vehicles, a few costume faces); skip flags,
people, skin tones, keycaps, symbols and text-like emoji; collapse variants ("dog2", "poodle",
"guide_dog" -> "dog"). Class rank = DreamBench-like words first (`PRIORITY`), then the remaining
classes in a seeded shuffle; weight(rank r) ∝ (r + 5) ** -s (Zipf–Mandelbrot: long tail, but the
head class is not a third of the data). `HEAD` / `TAIL` are what `build` produced with the pinned
npm versions; `build` checks them against `meta.json` and warns if the packages ever change.
"""
from __future__ import annotations

import numpy as np

# Whole categories / subcategories (emoji.json) that are never objects.
SKIP_CATEGORIES = {"Flags", "Component", "Symbols", "People & Body"}
KEEP_SMILEY_SUBCATS = {"face-costume", "cat-face", "monkey-face", "face-negative"}
SKIP_SUBCATS = {"place-map", "place-geographic", "place-religious", "award-medal"}

SKIP_NAMES = set("""
triumph rage angry face_with_symbols_on_mouth pig_nose feet microbe rosette ear_of_rice leaves
bamboo rice_scene flags tanabata_tree red_envelope reminder_ribbon spades hearts diamonds clubs
black_joker mahjong flower_playing_cards golf mute no_bell musical_score musical_note notes
level_slider control_knobs calling e-mail chart chart_with_upwards_trend chart_with_downwards_trend
bar_chart card_index_dividers lock_with_ink_pen closed_lock_with_key hammer_and_pick hammer_and_wrench
link dna drop_of_blood smoking station busstop motorway railway_track foggy night_with_stars cityscape
sunrise_over_mountains sunrise city_sunset city_sunrise bridge_at_night hotsprings
new_moon waxing_crescent_moon first_quarter_moon moon full_moon waning_gibbous_moon last_quarter_moon
waning_crescent_moon new_moon_with_face first_quarter_moon_with_face last_quarter_moon_with_face
full_moon_with_face milky_way partly_sunny thunder_cloud_and_rain mostly_sunny barely_sunny
partly_sunny_rain lightning fog wind_blowing_face cyclone zap ocean sparkles dart wedding love_hotel
post_office european_post_office department_store convenience_store bank hotel office hospital school
kaaba stadium building_construction house_buildings derelict_house_building classical_building
japan world_map page_with_curl page_facing_up memo bookmark_tabs card_index spiral_note_pad
speech_balloon identification_card placard black_nib airplane_departure airplane_arriving
""".split())

OVERRIDE = {
    # DreamBench-like classes
    "dog": "dog", "dog2": "dog", "guide_dog": "dog", "service_dog": "dog", "poodle": "dog",
    "cat": "cat", "cat2": "cat", "black_cat": "cat", "smiley_cat": "cat", "smile_cat": "cat", "joy_cat": "cat",
    "heart_eyes_cat": "cat", "smirk_cat": "cat", "kissing_cat": "cat", "scream_cat": "cat",
    "crying_cat_face": "cat", "pouting_cat": "cat",
    "school_satchel": "backpack", "athletic_shoe": "sneaker", "mans_shoe": "shoe", "womans_flat_shoe": "shoe",
    "hiking_boot": "boot", "boot": "boot", "eyeglasses": "glasses", "dark_sunglasses": "glasses",
    "alarm_clock": "clock", "mantelpiece_clock": "clock", "amphora": "vase", "bowl_with_spoon": "bowl",
    "canned_food": "can", "teddy_bear": "teddy bear", "hankey": "poop emoji", "robot_face": "robot",
    "racing_car": "race car", "japanese_ogre": "ogre", "japanese_goblin": "goblin", "space_invader": "alien monster",
    # animals
    "monkey_face": "monkey", "see_no_evil": "monkey", "hear_no_evil": "monkey", "speak_no_evil": "monkey",
    "tiger2": "tiger", "racehorse": "horse", "cow2": "cow", "pig2": "pig", "dromedary_camel": "camel",
    "mouse2": "mouse", "rabbit2": "rabbit", "hatching_chick": "chick", "baby_chick": "chick", "hatched_chick": "chick",
    "dove_of_peace": "dove", "black_bird": "bird", "dragon_face": "dragon", "sauropod": "dinosaur", "t-rex": "dinosaur",
    "whale": "whale", "whale2": "whale", "camel": "camel", "basketball": "basketball", "crescent_moon": "moon", "wood": "logs", "shell": "seashell", "bee": "bee", "ladybug": "ladybug", "imp": "devil", "smiling_imp": "devil",
    "skull_and_crossbones": "skull", "alien": "alien", "clown_face": "clown", "water_buffalo": "buffalo",
    # plants
    "white_flower": "flower", "blossom": "flower", "cherry_blossom": "cherry blossom", "wilted_flower": "rose",
    "evergreen_tree": "pine tree", "deciduous_tree": "tree", "leafless_tree": "tree", "maple_leaf": "leaf",
    "fallen_leaf": "leaf", "empty_nest": "nest", "nest_with_eggs": "nest", "brown_mushroom": "mushroom",
    "four_leaf_clover": "clover", "shamrock": "clover", "potted_plant": "potted plant",
    # food
    "apple": "apple", "green_apple": "apple", "tangerine": "orange", "kiwifruit": "kiwi", "eggplant": "eggplant",
    "corn": "corn", "hot_pepper": "chili pepper", "leafy_green": "lettuce", "peanuts": "peanut",
    "baguette_bread": "baguette", "cheese_wedge": "cheese", "meat_on_bone": "meat", "poultry_leg": "chicken leg",
    "cut_of_meat": "steak", "fries": "french fries", "pizza": "pizza", "hotdog": "hot dog", "fried_egg": "fried egg",
    "shallow_pan_of_food": "paella", "stew": "pot", "green_salad": "salad", "salt": "salt shaker", "bento": "bento box",
    "rice": "rice bowl", "curry": "curry", "ramen": "ramen", "sweet_potato": "sweet potato", "fish_cake": "fish cake",
    "icecream": "ice cream", "ice_cream": "ice cream", "shaved_ice": "shaved ice", "birthday": "cake", "cake": "cake",
    "chocolate_bar": "chocolate bar", "coffee": "coffee cup", "tea": "teacup", "sake": "sake bottle",
    "champagne": "champagne bottle", "cocktail": "cocktail", "beer": "beer mug", "beers": "beer mug",
    "clinking_glasses": "champagne glass", "tumbler_glass": "glass", "cup_with_straw": "cup", "pouring_liquid": "glass",
    "glass_of_milk": "glass", "beverage_box": "juice box", "mate_drink": "mate", "knife_fork_plate": "plate",
    "fork_and_knife": "cutlery", "hocho": "kitchen knife", "honey_pot": "honey pot", "takeout_box": "takeout box",
    # places, weather, events
    "house": "house", "house_with_garden": "house", "hut": "hut", "japanese_castle": "castle", "european_castle": "castle",
    "tokyo_tower": "tower", "statue_of_liberty": "statue", "church": "church", "mosque": "mosque", "hindu_temple": "temple",
    "synagogue": "synagogue", "shinto_shrine": "shrine", "carousel_horse": "carousel horse", "barber": "barber pole",
    "sunny": "sun", "sun_with_face": "sun", "ringed_planet": "planet", "star": "star", "star2": "star", "stars": "shooting star",
    "rain_cloud": "cloud", "snow_cloud": "cloud", "closed_umbrella": "umbrella", "umbrella_with_rain_drops": "umbrella",
    "umbrella_on_ground": "beach umbrella", "snowman_without_snow": "snowman", "jack_o_lantern": "pumpkin",
    "sparkler": "sparkler", "tada": "party popper", "dolls": "dolls", "gift": "gift box", "admission_tickets": "ticket",
    "medal": "medal", "sports_medal": "medal", "first_place_medal": "medal", "second_place_medal": "medal",
    "third_place_medal": "medal", "trophy": "trophy",
    # vehicles
    "steam_locomotive": "train", "railway_car": "train", "bullettrain_side": "train", "bullettrain_front": "train",
    "train2": "train", "metro": "train", "light_rail": "train", "monorail": "train", "mountain_railway": "train",
    "train": "tram", "tram": "tram", "oncoming_bus": "bus", "trolleybus": "bus", "minibus": "minibus",
    "oncoming_police_car": "police car", "oncoming_taxi": "taxi", "car": "car", "oncoming_automobile": "car",
    "blue_car": "camper van", "truck": "truck", "articulated_lorry": "truck", "racing_motorcycle": "motorcycle",
    "manual_wheelchair": "wheelchair", "motorized_wheelchair": "wheelchair", "bike": "bicycle", "scooter": "kick scooter",
    "fuelpump": "fuel pump", "rotating_light": "siren", "traffic_light": "traffic light",
    "vertical_traffic_light": "traffic light", "octagonal_sign": "stop sign", "construction": "construction sign",
    "boat": "sailboat", "speedboat": "motorboat", "motor_boat": "motorboat", "passenger_ship": "ship", "ferry": "ship",
    "small_airplane": "airplane", "suspension_railway": "cable car", "mountain_cableway": "cable car",
    "aerial_tramway": "cable car", "flying_saucer": "ufo", "bellhop_bell": "service bell", "luggage": "suitcase",
    "hourglass_flowing_sand": "hourglass", "timer_clock": "timer",
    # sports, games
    "soccer": "soccer ball", "football": "american football", "rugby_football": "rugby ball", "tennis": "tennis racket",
    "flying_disc": "frisbee", "bowling": "bowling ball", "cricket_bat_and_ball": "cricket bat",
    "field_hockey_stick_and_ball": "hockey stick", "ice_hockey_stick_and_puck": "hockey stick", "lacrosse": "lacrosse stick",
    "table_tennis_paddle_and_ball": "ping pong paddle", "badminton_racquet_and_shuttlecock": "badminton racket",
    "martial_arts_uniform": "martial arts uniform", "fishing_pole_and_fish": "fishing rod", "running_shirt_with_sash": "tank top",
    "ski": "skis", "gun": "water pistol", "8ball": "billiard ball", "video_game": "game controller", "game_die": "die",
    "jigsaw": "puzzle piece", "art": "palette", "frame_with_picture": "picture frame", "thread": "spool of thread",
    "performing_arts": "theater masks", "yarn": "ball of yarn",
    # clothing
    "shirt": "t-shirt", "womans_clothes": "blouse", "folding_hand_fan": "hand fan", "thong_sandal": "flip-flop",
    "sandal": "sandal", "high_heel": "high heel", "womans_hat": "hat", "tophat": "top hat", "mortar_board": "graduation cap",
    "billed_cap": "cap", "military_helmet": "helmet", "helmet_with_white_cross": "helmet", "gem": "gem", "one-piece_swimsuit": "swimsuit",
    "shopping_bags": "shopping bag",
    # objects
    "speaker": "speaker", "sound": "speaker", "loud_sound": "speaker", "loudspeaker": "megaphone", "mega": "megaphone",
    "studio_microphone": "microphone", "headphones": "headphones", "musical_keyboard": "piano keyboard",
    "drum_with_drumsticks": "drum", "long_drum": "drum", "iphone": "mobile phone", "phone": "telephone",
    "telephone_receiver": "telephone", "fax": "fax machine", "low_battery": "battery", "computer": "laptop",
    "desktop_computer": "computer monitor", "three_button_mouse": "computer mouse", "cd": "cd", "dvd": "cd",
    "minidisc": "minidisc", "film_frames": "film strip", "clapper": "clapperboard", "tv": "television",
    "camera_with_flash": "camera", "vhs": "videocassette", "mag": "magnifying glass", "mag_right": "magnifying glass",
    "bulb": "light bulb", "flashlight": "flashlight", "izakaya_lantern": "lantern", "diya_lamp": "oil lamp",
    "notebook_with_decorative_cover": "notebook", "closed_book": "book", "book": "book", "green_book": "book",
    "blue_book": "book", "orange_book": "book", "books": "books", "ledger": "notebook", "newspaper": "newspaper",
    "rolled_up_newspaper": "newspaper", "moneybag": "money bag", "yen": "banknote", "dollar": "banknote", "euro": "banknote",
    "pound": "banknote", "money_with_wings": "banknote", "email": "envelope", "incoming_envelope": "envelope",
    "envelope_with_arrow": "envelope", "outbox_tray": "tray", "inbox_tray": "tray", "package": "parcel",
    "mailbox": "mailbox", "mailbox_closed": "mailbox", "mailbox_with_mail": "mailbox", "mailbox_with_no_mail": "mailbox",
    "ballot_box_with_ballot": "ballot box", "pencil2": "pencil", "lower_left_fountain_pen": "fountain pen",
    "lower_left_ballpoint_pen": "pen", "lower_left_paintbrush": "paintbrush", "lower_left_crayon": "crayon",
    "file_folder": "folder", "open_file_folder": "folder", "date": "calendar", "calendar": "calendar",
    "spiral_calendar_pad": "calendar", "pushpin": "pushpin", "round_pushpin": "pushpin", "paperclip": "paperclip",
    "linked_paperclips": "paperclip", "straight_ruler": "ruler", "triangular_ruler": "ruler", "scissors": "scissors",
    "card_file_box": "file box", "file_cabinet": "file cabinet", "wastebasket": "wastebasket", "lock": "padlock",
    "unlock": "padlock", "key": "key", "old_key": "key", "pick": "pickaxe", "dagger_knife": "dagger",
    "crossed_swords": "sword", "bow_and_arrow": "bow and arrow", "carpentry_saw": "saw", "nut_and_bolt": "bolt",
    "compression": "clamp", "scales": "balance scale", "probing_cane": "cane", "broken_chain": "chain", "chains": "chain",
    "alembic": "flask", "test_tube": "test tube", "petri_dish": "petri dish", "satellite_antenna": "satellite dish",
    "adhesive_bandage": "bandage", "couch_and_lamp": "couch", "mouse_trap": "mouse trap", "lotion_bottle": "lotion bottle",
    "safety_pin": "safety pin", "roll_of_paper": "toilet paper", "soap": "soap", "fire_extinguisher": "fire extinguisher",
    "shopping_trolley": "shopping cart", "funeral_urn": "urn", "nazar_amulet": "amulet", "moyai": "moai statue",
    "crystal_ball": "crystal ball", "magic_wand": "magic wand", "slot_machine": "slot machine", "mirror_ball": "disco ball",
    "nesting_dolls": "nesting dolls", "chess_pawn": "chess piece", "boxing_glove": "boxing glove", "goal_net": "goal",
    "ice_skate": "ice skate", "diving_mask": "diving mask", "curling_stone": "curling stone", "confetti_ball": "confetti ball",
    "christmas_tree": "christmas tree", "fireworks": "fireworks", "firecracker": "firecracker", "balloon": "balloon",
    "wind_chime": "wind chime", "ticket": "ticket", "ribbon": "ribbon", "sewing_needle": "needle",
}

# Rank order of the head: DreamBench classes first, then common, easily drawn words. Everything
# else follows in a seeded shuffle, so the tail is a random mix of rare words.
PRIORITY = [
    "dog", "cat", "backpack", "teapot", "sneaker", "boot", "glasses", "candle", "clock", "vase",
    "bowl", "can", "teddy bear", "robot", "duck", "race car", "poop emoji", "ogre", "alien monster", "sloth",
    "wolf", "shoe", "car", "apple", "bird", "flower", "tree", "house", "book", "coffee cup",
    "chair", "bicycle", "horse", "fish", "hat", "umbrella", "guitar", "bear", "rabbit", "monkey",
    "pig", "cow", "mouse", "chick", "frog", "train", "bus", "airplane", "key", "cake",
    "banana", "pizza", "ice cream", "balloon", "truck", "ship", "penguin", "owl", "turtle", "elephant",
]
SHUFFLE_SEED = 1234
MANDELBROT_OFFSET = 5  # weight ∝ (rank + 5) ** -s: keeps the top class near 4% instead of ~15%


def class_word(entry: dict) -> str | None:
    """Class word for one emoji.json entry, or None if it is not an object we render."""
    name, cat, sub = entry["short_name"], entry["category"], entry["subcategory"]
    if cat in SKIP_CATEGORIES or sub in SKIP_SUBCATS or name in SKIP_NAMES:
        return None
    if cat == "Smileys & Emotion" and sub not in KEEP_SMILEY_SUBCATS:
        return None
    if name in OVERRIDE:
        return OVERRIDE[name]
    if sub == "time" and name.startswith("clock"):
        return "clock"
    word = (entry.get("name") or name).lower().replace("’", "'").replace("_", " ")
    for suffix in (" face", " symbol"):
        word = word.removesuffix(suffix)
    return word


def rank_classes(words: set[str]) -> list[str]:
    """Order classes by intended frequency: PRIORITY (present ones) then a seeded shuffle."""
    head = [w for w in PRIORITY if w in words]
    rest = sorted(words - set(head))
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(rest))
    return head + [rest[i] for i in order]


def zipf_weights(n: int, s: float) -> np.ndarray:
    """(n,) float64 sampling probabilities for ranks 0..n-1, summing to 1."""
    w = (np.arange(n) + MANDELBROT_OFFSET) ** -float(s)
    return w / w.sum()


def head_tail(names: list[str], n_head: int = 50, n_tail: int = 20) -> tuple[list[str], list[str]]:
    """Names are already in rank order (class_id = rank), so head/tail are slices."""
    return names[:n_head], names[-n_tail:]


# From the real build (pinned npm versions, 598 classes); `build` warns if they ever drift.
# HEAD: the 50 most frequent classes (rank 0 = most frequent); TAIL: the 20 rarest (last = rarest).
HEAD: list[str] = [
    "dog", "cat", "backpack", "teapot", "sneaker", "boot", "glasses", "candle", "clock", "vase",
    "bowl", "can", "teddy bear", "robot", "duck", "race car", "poop emoji", "ogre", "alien monster",
    "sloth", "wolf", "shoe", "car", "apple", "bird", "flower", "tree", "house", "book",
    "coffee cup", "chair", "bicycle", "horse", "fish", "hat", "umbrella", "guitar", "bear",
    "rabbit", "monkey", "pig", "cow", "mouse", "chick", "frog", "train", "bus", "airplane", "key",
    "cake",
]
TAIL: list[str] = [
    "abacus", "cactus", "tomato", "stuffed flatbread", "rugby ball", "star", "label",
    "confetti ball", "laptop", "alien", "skateboard", "snail", "cupcake", "parrot", "rice cracker",
    "butterfly", "radio", "fishing rod", "tower", "crown",
]
